"""PNG charts of a `skillkern bench` run (matplotlib, headless):

  <op>-speedup.png  per shape, each non-baseline provider's speedup over the fastest baseline
                    that ran (fwd+bwd when measured), one bar group per shape; 1 = parity
  <op>-history.png  median time of skillkern's providers over the runs in the history file on
                    this run's device, one line per (shape, provider), runs in time order and
                    labelled by commit

matplotlib is optional (pip install matplotlib); without it --plot says so and the run goes on.
"""
from __future__ import annotations

import os


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    return plt


def _phase(rows: list[dict]) -> str:
    phases = {r["phase"] for r in rows if r.get("status") == "ok"}
    return "fwdbwd" if "fwdbwd" in phases else sorted(phases)[-1] if phases else "fwdbwd"


def _save(plt, fig, ax, path: str, ticks: list, rotation: int, ylabel: str, title: str, legend_size: int) -> str:
    """Tick labels, axis label, title and legend, then the PNG at path (the figure closed)."""
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=rotation, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def speedup_chart(op: str, rows: list[dict], path: str, baselines) -> str | None:
    """Bars of speedup vs the fastest baseline per shape; None when no row has a speedup."""
    plt = _pyplot()
    phase = _phase(rows)
    ok = [r for r in rows if r.get("status") == "ok" and r["phase"] == phase and r.get("speedup")
          and r["provider"] not in baselines]
    if not ok:
        return None
    labels = list(dict.fromkeys(r["label"] for r in ok))
    provs = list(dict.fromkeys(r["provider"] for r in ok))
    val = {(r["label"], r["provider"]): min(r["speedup"].values()) for r in ok}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(labels) * max(1, len(provs)) / 2 + 2), 4.5))
    width = 0.8 / len(provs)
    for j, p in enumerate(provs):
        xs = [i + (j - (len(provs) - 1) / 2) * width for i in range(len(labels))]
        ys = [val.get((lab, p), 0.0) for lab in labels]
        bars = ax.bar(xs, ys, width, label=p)
        for b, y in zip(bars, ys):
            if y:
                ax.annotate(f"{y:.2f}x", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    title = f"{op} on {ok[0].get('device', '')} ({ok[0].get('dtype')}, commit {ok[0].get('commit')})"
    return _save(plt, fig, ax, path, labels, 20, f"speedup over the fastest baseline ({phase})", title, 7)


def history_chart(op: str, rows: list[dict], history: list[dict], path: str) -> str | None:
    """Median ms per run of skillkern's providers at this run's shapes, on this run's device."""
    plt = _pyplot()
    phase = _phase(rows)
    device = next((r.get("device") for r in rows), None)
    labels = {r["label"] for r in rows}
    hist = [r for r in history if r.get("op") == op and r.get("device") == device and r.get("phase") == phase
            and r.get("status") == "ok" and r.get("label") in labels and str(r.get("provider", "")).startswith("skillkern")]
    if not hist:
        return None
    runs = sorted({(r.get("time") or "", r["run_id"]) for r in hist})
    index = {run_id: i for i, (_, run_id) in enumerate(runs)}
    commit = {r["run_id"]: r.get("commit") or "?" for r in hist}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(runs) + 3), 4.5))
    series: dict[tuple, list] = {}
    for r in hist:
        series.setdefault((r["label"], r["provider"]), []).append((index[r["run_id"]], r["median_ms"]))
    for (label, prov), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{prov} {label}")
    ax.set_yscale("log")
    return _save(plt, fig, ax, path, [commit[run_id] for _, run_id in runs], 30, f"median ms ({phase})",
                 f"{op} history on {device}", 6)


def plot_run(rows: list[dict], history: list[dict], out_dir: str, baselines: dict) -> list[str]:
    """Both charts for every op of a run; returns the files written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        for p in (speedup_chart(op, op_rows, os.path.join(out_dir, f"{op}-speedup.png"), baselines.get(op, ())),
                  history_chart(op, op_rows, history, os.path.join(out_dir, f"{op}-history.png"))):
            if p:
                written.append(p)
    return written
