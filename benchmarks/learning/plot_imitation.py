"""Plot CDRED vs RED learning curves from the JSON files written by ``imitation_learning.py --out``.

One panel per task: evaluation return (mean, band = one standard error of that mean over the
evaluation episodes) against env steps for every (file, reward) pair, the demonstrations' return as a
dashed line and 90% of it dotted.

    python benchmarks/learning/plot_imitation.py runs/reacher_cdred.json:"CPU" runs/reacher_red.json:"CPU" \
        --out docs/img/imitation_reacher-easy.png

A ``FILE:LABEL`` argument adds LABEL to that file's curve names (e.g. the machine or the demo policy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cdred_pipeline.artifacts import save_figure_atomic


def load_curves(specs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """{task: [{label, expert, env_step, mean, sem}, ...]} from ``FILE[:LABEL]`` arguments."""
    out: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        path, _, tag = spec.partition(":")
        data = json.loads(Path(path).read_text())
        for task, arms in data.items():
            for name, arm in arms.items():
                rows = arm["rows"]  # imitate.read_metrics: eval rows only
                reward, _, variant = name.partition(" ")  # e.g. "cdred detached seed=1"
                out.setdefault(task, []).append({
                    "label": reward.upper() + (f" {variant}" if variant else "") + (f" ({tag})" if tag else ""),
                    "expert": float(arm["expert"]),
                    "env_step": [r["env_step"] for r in rows],
                    "mean": [r["eval_return_mean"] for r in rows],
                    "sem": [r.get("eval_return_std", 0.0) / max(1, r.get("eval_episodes", 1)) ** 0.5 for r in rows],
                })
    return out


def plot(curves: dict[str, list[dict[str, Any]]], png: Path) -> None:
    """One panel per task, written atomically (Agg backend: no display needed)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(curves), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, (task, arms) in enumerate(sorted(curves.items())):
        ax = fig.add_subplot(1, len(curves), i + 1)
        for j, arm in enumerate(arms):
            x, m, s = np.array(arm["env_step"]), np.array(arm["mean"]), np.array(arm["sem"])
            ax.plot(x, m, "-o", color=f"C{j}", label=arm["label"])
            ax.fill_between(x, m - s, m + s, color=f"C{j}", alpha=0.12)
        for expert in sorted({a["expert"] for a in arms}):
            ax.axhline(expert, color="k", linestyle="--", linewidth=1, label=f"expert demos {expert:.1f}")
            ax.axhline(0.9 * expert, color="k", linestyle=":", linewidth=1, label="90% of it")
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="imitation_learning.py JSON outputs, each FILE or FILE:LABEL")
    ap.add_argument("--out", default="benchmarks/results/imitation_learning.png")
    args = ap.parse_args()
    curves = load_curves(args.files)
    if not curves:
        raise SystemExit("no curves in " + ", ".join(args.files))
    plot(curves, Path(args.out))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
