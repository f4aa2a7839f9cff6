"""Plot a run's curves from its metrics.jsonl into a PNG.

    python -m model.plot runs/tiny/metrics.jsonl [out.png]

Panels: training loss per task (raw points and a moving average: one task per step makes the
raw curve jump between tasks' scales), learning rate, tokens/s, and the evaluation metrics
(accuracy / mean recall) per task against the step when evaluations were logged.
"""
from __future__ import annotations

import json
import os
import sys

# Moving-average window over a task's own steps.
SMOOTH = 10


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.plot: no metrics file at {path!r}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_metrics(metrics_path: str, png_path: str) -> str:
    """Write the PNG; returns its path. Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("type") == "train"]
    evals = [r for r in rows if r.get("type") == "eval"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for task in sorted({r["task"] for r in train}):
        pts = [(r["step"], r["loss"]) for r in train if r["task"] == task]
        steps, losses = zip(*pts)
        line, = ax.plot(steps, _smooth(list(losses), SMOOTH), label=task)
        ax.scatter(steps, losses, s=4, alpha=0.25, color=line.get_color())
    ax.set(title=f"training loss (moving average of {SMOOTH} steps per task)", xlabel="step", ylabel="loss")
    if train:
        ax.legend(fontsize=8)
    ax = axes[0][1]
    if train:
        ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set(title="learning rate", xlabel="step")
    ax = axes[1][0]
    if train:
        ax.plot([r["step"] for r in train], _smooth([r["tok_s"] for r in train], SMOOTH))
    ax.set(title="tokens / s (moving average)", xlabel="step")
    ax = axes[1][1]
    colors = {}
    for task in sorted({r["task"] for r in evals}):
        for split, style in (("val", dict(marker="o", linestyle="-")), ("test", dict(marker="*", markersize=12, linestyle=""))):
            pts = [(r["step"], r.get("accuracy", r.get("mean_R"))) for r in evals
                   if r["task"] == task and r["split"] == split]
            if not pts:
                continue
            steps, vals = zip(*pts)
            kw = {"color": colors[task]} if task in colors else {}
            line, = ax.plot(steps, vals, label=f"{task} ({split})", **style, **kw)
            colors.setdefault(task, line.get_color())
    ax.set(title="eval: accuracy (classify) / mean R@1,5,10 (retrieve); * = test", xlabel="step", ylim=(0, 1))
    if evals:
        ax.legend(fontsize=7, loc="center right", ncol=2)  # accuracies sit high, recalls low
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        print("usage: python -m model.plot METRICS.jsonl [OUT.png]", file=sys.stderr)
        return 2
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(argv[0]), "curves.png")
    try:
        print(plot_metrics(argv[0], out))
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
