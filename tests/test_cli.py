"""The `skillkern` command: info, bench (history rows, speedups, % of ceiling, compare, plots,
markdown, the hook for a checkout's benchmarks/bench_*.py scripts) and profile; the checkout's
benchmarks/bench.py entry point.

The bench runs here are narrow (one op, given providers, one phase, 2 timed calls) so the file
takes seconds; `skillkern bench --quick` over every op is what `make demo`-style checks run.
"""
import importlib
import json
import os
import sys
import textwrap

import pytest
import torch

import skillkern.bench as bench_pkg
from skillkern.bench import _common, history, ops
from skillkern.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Raw per-op rows go to a temporary results folder, not benchmarks/results/."""
    monkeypatch.setattr(_common, "RESULTS", str(tmp_path / "results"))
    return tmp_path


# ----------------------------------------------------------------------------- info


def test_info_json_and_text(capsys):
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["versions"]["torch"] == torch.__version__
    assert set(d["backends"]) >= {"skill_ffn", "token_similarity", "token_reduce", "token_pool", "skill_route"}
    # CPU tensors: the reference always runs and auto never picks interpreted Triton
    for op, per in d["backends"].items():
        assert "torch" in per["cpu"]["available"] and per["cpu"]["auto"] == "torch", op
    assert d["devices"] == ([] if not torch.cuda.is_available() else d["devices"])
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "skill_ffn" in text and "extension:" in text and "auto" in text


def test_parse_archs():
    from skillkern._info import _parse_archs

    assert _parse_archs("80_90") == ["8.0", "9.0"]
    assert _parse_archs("90") == ["9.0"]
    assert _parse_archs("100_120") == ["10.0", "12.0"]
    assert _parse_archs("unknown") is None


# ----------------------------------------------------------------------------- history


def _raw(provider, mode, ms, metric=None, **kw):
    r = {"provider": provider, "mode": mode, "status": "ok", "ms": ms, "ms_p20": ms * 0.9, "ms_p80": ms * 1.1,
         "label": "S1", "dtype": "bf16", "device": "dev", "commit": "abc1234", "T": 8, "d": 4, **kw}
    if metric:
        r.update(metric)
    return r


def test_history_rows_speedups_and_ceiling():
    raw = [_raw("base", "fwd+bwd", 4.0, {"tflops": 10.0}), _raw("ours", "fwd+bwd", 1.0, {"tflops": 40.0}),
           _raw("other", "fwd+bwd", 2.0, {"tflops": 20.0}), _raw("base", "fwd", 3.0, {"tflops": 5.0}),
           {"provider": "ours", "mode": None, "status": "unavailable", "reason": "no GPU", "label": "S1"},
           {"provider": "matmul-peak", "mode": "fwd", "status": "ok", "ms": 1.0, "tflops": 80.0}]
    meta = {"metric": "tflops", "baselines": ("base", "other"), "shape_fields": ("T", "d")}
    ceil = {"matmul": {"bf16": {"dtype": "bf16", "tflops": 80.0}}, "copy": {"gbps": 100.0}}
    rows = history.to_history("op", raw, meta, ceil, {"run_id": "r1", "versions": {"skillkern": "x"}})
    assert [r["provider"] for r in rows] == ["base", "ours", "other", "base", "ours"]  # ceiling row dropped
    ours = rows[1]
    assert ours["phase"] == "fwdbwd" and ours["shape"] == {"T": 8, "d": 4} and ours["metric"] == "tflops"
    assert ours["speedup"] == {"base": 4.0, "other": 2.0}
    assert ours["pct_ceiling"] == pytest.approx(50.0) and ours["ceiling"]["kind"] == "matmul"
    assert rows[0]["speedup"] == {"base": 1.0, "other": 0.5}
    assert rows[3]["speedup"] == {"base": 1.0}  # fwd: only base ran
    assert rows[4]["status"] == "unavailable" and rows[4]["median_ms"] is None and rows[4]["speedup"] == {}
    # memory-bound op: % of the copy ceiling
    g = history.to_history("op", [_raw("ours", "fwd", 1.0, {"gbps": 25.0})], {"metric": "gbps"}, ceil,
                           {"run_id": "r1", "versions": {}})
    assert g[0]["pct_ceiling"] == pytest.approx(25.0) and g[0]["ceiling"]["kind"] == "copy"


def test_compare_prefers_same_device_and_flags_noise():
    def row(dev, ms, t, commit="old1234"):
        return {"op": "op", "label": "S", "phase": "fwd", "dtype": "bf16", "provider": "p", "status": "ok",
                "median_ms": ms, "p20_ms": ms * 0.95, "p80_ms": ms * 1.05, "device": dev, "time": t, "commit": commit}

    ref = [row("H100", 2.0, "t1"), row("H100", 4.0, "t2"), row("H200", 1.0, "t3")]
    cmp = history.compare([row("H100", 1.0, "t9", "new")], ref)
    assert len(cmp) == 1 and cmp[0]["old_ms"] == 4.0 and cmp[0]["speedup"] == 4.0  # newest on the same device
    assert cmp[0]["same_device"] and not cmp[0]["noise"]
    near = history.compare([row("A100", 1.02, "t9", "new")], ref)  # no A100 row: any device, flagged
    assert near[0]["old_ms"] == 1.0 and not near[0]["same_device"] and near[0]["noise"]
    text = history.format_compare(cmp, "commit old1234")
    assert "4.00" in text and "old ms" in text


# ----------------------------------------------------------------------------- bench


TOKRED = ["--op", "token_reduce", "--quick", "--cpu-reps", "3", "--device", "cpu"]
TOKRED_OPS = ["--", "--providers", "eager-wukong,skillkern-torch", "--modes", "fwd+bwd", "--cpu-reps", "2"]


def test_bench_history_compare_plot_markdown(results, capsys):
    hist_file = results / "history.cpu.jsonl"
    md = results / "bench.md"
    args = [*TOKRED, "--history", str(hist_file)]
    assert main(["bench", *args, *TOKRED_OPS]) == 0
    out = capsys.readouterr().out
    assert "ceilings: matmul bf16" in out and "CPU run" in out and "==== summary" in out
    rows = history.read(str(hist_file))
    assert rows and {r["op"] for r in rows} == {"token_reduce"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} == {"eager-wukong", "skillkern-torch"}
    for r in ok:
        assert r["phase"] == "fwdbwd" and r["metric"] == "gbps" and r["ceiling"]["kind"] == "copy"
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["pct_ceiling"] == pytest.approx(100 * r["value"] / r["ceiling"]["value"])
        assert set(r["versions"]) >= {"torch", "triton", "cuda", "skillkern", "driver"} and r["commit"]
        assert set(r["shape"]) == {"B", "N", "D", "S", "G", "lmin", "values"}
    sk = next(r for r in ok if r["provider"] == "skillkern-torch")
    eager = next(r for r in ok if r["provider"] == "eager-wukong" and r["label"] == sk["label"])
    assert sk["speedup"]["eager-wukong"] == pytest.approx(eager["median_ms"] / sk["median_ms"])
    assert (results / "results" / "token_reduce.cpu.jsonl").exists()  # the op's own rows too
    # a second run, then compare the newest run with the first one (kept as a file)
    first = results / "first.jsonl"
    first.write_text(hist_file.read_text())
    assert main(["bench", *args, *TOKRED_OPS]) == 0
    capsys.readouterr()
    assert main(["bench", *args, "--no-run", "--compare", str(first), "--plot", str(results / "plots"),
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    compared = out.split("== compared with file")[1]
    assert "skillkern-torch" in compared and "eager-wukong" in compared
    pngs = sorted(os.listdir(results / "plots"))
    assert pngs == ["token_reduce-history.png", "token_reduce-speedup.png"]
    for p in pngs:
        assert (results / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "| shape | provider | ms | GB/s | % ceiling | speedups |" in text and "eager-wukong" in text


def test_bench_runs_a_checkout_script(results, tmp_path, monkeypatch, capsys):
    """A benchmarks/bench_<name>.py that follows the conventions (new_parser / add_run_args,
    rows to --out; METRIC, BASELINES and a Shape dataclass at top level) is run by
    `skillkern bench --op <name>` in a child process, with the ceilings handed in."""
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    (scripts / "bench_fake_step.py").write_text(textwrap.dedent('''
        import json, sys
        from dataclasses import asdict, dataclass
        from skillkern.bench._common import add_run_args, append_rows, given_ceilings, new_parser

        METRIC = "tflops"
        BASELINES = ("slow",)

        @dataclass(frozen=True)
        class Shape:
            n: int

        def main(argv=None):
            ap = new_parser("fake", "quick", "n=..", {"cpu": list}, ("slow", "fast"))
            add_run_args(ap, "fake_step", "")
            args = ap.parse_args(argv)
            c = given_ceilings()
            assert c["matmul_tflops"]["bf16"] > 0 and c["copy_gbps"] > 0, c
            rows = [dict(asdict(Shape(7)), provider=p, mode="fwd+bwd", status="ok", ms=ms, ms_p20=ms, ms_p80=ms,
                         tflops=t, label="n7", dtype=args.dtype, device="fake-dev", commit="c0ffee1")
                    for p, ms, t in (("slow", 3.0, 1.0), ("fast", 1.5, 2.0))]
            append_rows(args.out, rows)
            return 0

        if __name__ == "__main__":
            sys.exit(main())
    '''))
    monkeypatch.setattr(bench_pkg, "script_dir", lambda: str(scripts))
    assert "fake_step" in ops() and ops()["fake_step"].path.endswith("bench_fake_step.py")
    hist_file = results / "h.jsonl"
    assert main(["bench", "--op", "fake_step", "--cpu-reps", "3", "--device", "cpu", "--history", str(hist_file)]) == 0
    rows = history.read(str(hist_file))
    fast = next(r for r in rows if r["provider"] == "fast")
    assert fast["op"] == "fake_step" and fast["shape"] == {"n": 7} and fast["speedup"] == {"slow": 2.0}
    assert fast["metric"] == "tflops" and fast["pct_ceiling"] is not None
    assert "fast" in capsys.readouterr().out


def test_compare_by_git_revision():
    """--compare REV: the history rows whose commit is REV (short sha, -dirty or not)."""
    sha = history.resolve_rev("HEAD")
    if sha is None:
        pytest.skip("not a git checkout")
    rows = [{"commit": sha[:7], "run_id": "a"}, {"commit": sha[:9] + "-dirty", "run_id": "b"},
            {"commit": "0000000", "run_id": "c"}, {"commit": "unknown", "run_id": "d"}]
    picked, what = history.reference_rows("HEAD", rows)
    assert [r["run_id"] for r in picked] == ["a", "b"] and sha[:12] in what
    none, what = history.reference_rows("no-such-rev-xyz", rows)
    assert none == [] and "not a revision git knows" in what


def test_bench_argument_errors():
    with pytest.raises(SystemExit, match=r"`--op` \['nope'\] unknown"):
        main(["bench", "--op", "nope"])
    with pytest.raises(SystemExit, match="only for `skillkern bench`"):
        main(["info", "--", "--x"])


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("skill_ffn", "token_similarity", "token_reduce"):
        assert name in out


def test_bench_entry_point_and_shim(results, capsys):
    """benchmarks/bench.py <op> runs the package's runner and then the goal verdicts (n/a on a
    CPU); benchmarks/_common.py re-exports the harness for scripts that `from _common import`."""
    from skillkern.bench import runner

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        shim = importlib.import_module("_common")
        bench_py = importlib.import_module("bench")
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    for name in ("new_parser", "add_run_args", "given_ceilings", "RESULTS", "time_ms"):
        assert getattr(shim, name) is getattr(_common, name)
    for name in ("run_shapes", "setup_failed", "stamp_rows"):
        assert getattr(shim, name) is getattr(runner, name)
    out_file = results / "tr.jsonl"
    assert bench_py.main(["token_reduce", "--quick", "--device", "cpu", "--providers", "eager-wukong", "--modes", "fwd",
                          "--cpu-reps", "1", "--copy-gb", "0.0001", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "GPU goal (token_reduce, skillkern-triton): n/a on CPU" in out
    assert {r["provider"] for r in history.read(str(out_file))} == {"copy", "eager-wukong"}
    assert bench_py.main(["nope"]) == 2
    assert not [f for f in os.listdir(os.path.join(REPO, "benchmarks"))
                if f.startswith("bench_") and f[6:-3] in bench_pkg.BUILTIN]  # no per-op wrappers


# ----------------------------------------------------------------------------- profile


def test_profile_cpu(tmp_path, capsys):
    trace = tmp_path / "t.json"
    rc = main(["profile", "--op", "token_reduce", "--provider", "eager-wukong", "--iters", "2", "--warmup", "1",
               "--device", "cpu", "--trace", str(trace)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "aten::" in out and "whole call:" in out and "GB/s" in out and "ncu --set full" in out
    assert "--provider eager-wukong" in out and "--op token_reduce" in out
    assert "traceEvents" in json.loads(trace.read_text())
    with pytest.raises(SystemExit, match="`--provider` must be one of"):
        main(["profile", "--op", "token_reduce", "--provider", "nope"])
    with pytest.raises(SystemExit, match="`--op` must be one of the package's op benchmarks"):
        main(["profile", "--op", "train_step"])
