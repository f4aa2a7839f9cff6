"""backend="auto" by measurement: skillkern.bench.auto_order turns goal-shape bench rows into
the per-GPU-model order that _backend.resolve() follows."""
import torch

from skillkern import _backend
from skillkern.bench import auto_order, runner

GPU = "NVIDIA H200"


def _rows(op, provider, ms, *, status="ok", time="2026-12-04T13:00:00+00:00", device=GPU, commit="abc1234",
          shapes=None):
    """One row per goal shape of op, in the mode the goals judge; ms: one number or one per shape."""
    shapes = runner.spec_of(op).presets["goal"]() if shapes is None else shapes
    ms = ms if isinstance(ms, list) else [ms] * len(shapes)
    return [{"op": op, "device": device, "provider": provider, "label": s.label(), "mode": runner.goal_mode(op, s),
             "status": status, "ms": m, "time": time, "commit": commit} for s, m in zip(shapes, ms)]


def test_the_faster_backend_goes_first():
    rows = _rows("skill_ffn", "skillkern-triton", 5.0) + _rows("skill_ffn", "skillkern-cuda", 3.5)
    entry = auto_order.orders(rows)[GPU]["skill_ffn"]
    assert entry["order"] == ["cuda", "triton", "torch"]
    assert entry["ms"] == {"triton": 5.0, "cuda": 3.5}
    rows = _rows("skill_ffn", "skillkern-triton", 3.0) + _rows("skill_ffn", "skillkern-cuda", 3.5)
    assert auto_order.orders(rows)[GPU]["skill_ffn"]["order"] == ["triton", "cuda", "torch"]


def test_totals_are_over_every_goal_shape_and_a_backend_missing_one_is_not_ranked():
    n = len(runner.spec_of("token_similarity").presets["goal"]())
    rows = _rows("token_similarity", "skillkern-triton", [1.0 + i for i in range(n)])
    cuda = _rows("token_similarity", "skillkern-cuda", 0.1)
    rows += cuda[:-1] if n > 1 else [dict(cuda[0], status="failed")]
    entry = auto_order.orders(rows)[GPU]["token_similarity"]
    assert entry["ms"] == {"triton": sum(1.0 + i for i in range(n))}  # cuda: a goal shape not ok
    assert entry["order"] == ["triton", "cuda", "torch"]  # the unranked ones keep the default order


def test_a_newer_row_replaces_an_older_one_failures_included():
    old = _rows("skill_ffn", "skillkern-cuda", 1.0, time="2026-12-01T00:00:00+00:00")
    new = _rows("skill_ffn", "skillkern-cuda", 9.0, time="2026-12-05T00:00:00+00:00", commit="def5678")
    tri = _rows("skill_ffn", "skillkern-triton", 5.0)
    entry = auto_order.orders(new + old + tri)[GPU]["skill_ffn"]  # file order does not matter
    assert entry["order"][0] == "triton" and entry["rows"]["cuda"] == "def5678 2026-12-05"
    failed = _rows("skill_ffn", "skillkern-cuda", 1.0, status="failed", time="2026-12-06T00:00:00+00:00")
    assert "cuda" not in auto_order.orders(old + tri + failed)[GPU]["skill_ffn"]["ms"]


def test_partial_cuda_ops_never_put_cuda_first():
    rows = _rows("token_reduce", "skillkern-triton", 2.0) + _rows("token_reduce", "skillkern-cuda", 1.0)
    entry = auto_order.orders(rows)[GPU]["token_reduce"]
    assert entry["ms"]["cuda"] < entry["ms"]["triton"]
    assert entry["order"] == ["triton", "cuda", "torch"]


def test_cpu_rows_and_other_providers_are_ignored():
    rows = _rows("skill_ffn", "skillkern-cuda", 1.0, device="cpu (2 cores)") + _rows("skill_ffn", "dense-cublas", 1.0)
    assert auto_order.orders(rows) == {}


def test_written_module_round_trips(tmp_path, monkeypatch):
    rows = _rows("skill_ffn", "skillkern-triton", 5.0) + _rows("skill_ffn", "skillkern-cuda", 3.5)
    f = tmp_path / "rows.jsonl"
    import json

    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(auto_order, "TARGET", str(tmp_path / "_measured.py"))
    assert auto_order.main([str(f), "--write"]) == 0
    ns = {}
    exec((tmp_path / "_measured.py").read_text(), ns)
    assert ns["MEASURED"] == auto_order.orders(rows)


def test_resolve_follows_the_measured_order_for_that_gpu_model(monkeypatch):
    import skillkern._measured as measured

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(measured, "MEASURED", {GPU: {"skill_ffn": {"order": ["cuda", "triton", "torch"]}}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_backend, "_triton_reason", lambda device: None)
    monkeypatch.setattr(_backend, "_cuda_reason", lambda op: None)
    name = {"gpu": GPU}
    monkeypatch.setattr(_backend, "_device_name", lambda index: name["gpu"])
    assert _backend.resolve("skill_ffn", "auto", cuda) == "cuda"
    assert _backend.resolve("token_similarity", "auto", cuda) == "triton"  # not measured: the default
    name["gpu"] = "NVIDIA H100 80GB HBM3"  # another model: the default order
    assert _backend.resolve("skill_ffn", "auto", cuda) == "triton"
    assert _backend.resolve("skill_ffn", "auto", torch.device("cpu")) == "torch"


def test_the_committed_table_names_only_known_ops_and_backends():
    from skillkern._measured import MEASURED

    for device, ops in MEASURED.items():
        for op, entry in ops.items():
            assert op in _backend._AUTO_ORDER, (device, op)
            assert set(entry["order"]) <= {"triton", "cuda", "torch"} and entry["order"][-1] == "torch"
            assert op not in _backend._CUDA_PARTIAL or entry["order"].index("triton") < entry["order"].index("cuda")
