"""The plots of make_results.py's report: EXP_DIR/plots/{loss,valid_wer,wer_by_method}.png.

Each plot function draws one PNG from an experiment's gathered results
(experiment_results.py) and returns False, drawing nothing, when its data are
absent.  matplotlib is imported on the first plot, on the Agg backend.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

from pruned_transducer_stateless4.experiment_results import (
    ExperimentResults,
    Row,
    Training,
    part_header,
)

# The plots draw_plots() makes, by file name (without .png).
PLOT_NAMES = ("loss", "valid_wer", "wer_by_method")


def _pyplot():
    """pyplot on the Agg backend (no display on a server; must precede the import)."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache chatter
    import matplotlib.pyplot as plt

    return plt


def plot_loss(training: Training, path: Path) -> bool:
    """Training and validation loss per frame against batches."""
    train = [(p.batch, p.loss) for p in training.train_points if p.loss is not None]
    valid = [(p.batch, p.loss) for p in training.valid_points if p.loss is not None]
    if not train and not valid:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation loss")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss per frame")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_valid_wer(training: Training, path: Path) -> bool:
    """Validation greedy WER against minutes of training."""
    points = [(p.minutes, p.wer) for p in training.valid_points if p.wer is not None]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*points), "o-")
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("greedy WER (%), dev-clean subset")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_wer_by_method(rows: Sequence[Row], parts: Sequence[str], path: Path) -> bool:
    """A bar per row of the WER table and part."""
    if not rows or not parts:
        return False
    plt = _pyplot()
    width = 0.8 / len(parts)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    for index, part in enumerate(parts):
        xs = [i + (index - (len(parts) - 1) / 2) * width for i in range(len(rows))]
        values = [row.records[part].wer.wer if part in row.records else 0.0 for row in rows]
        bars = ax.bar(xs, values, width, label=part_header(part))
        ax.bar_label(bars, labels=[f"{v:.1f}" if part in row.records else ""
                                   for v, row in zip(values, rows)], fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"[{row.number}] {row.method}\n{row.mode}" for row in rows],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("WER (%)")
    top = max((r.wer.wer for row in rows for r in row.records.values()), default=0.0)
    ax.set_ylim(0, max(top * 1.12, 1.0))  # room for the bar labels
    # Above the axes, where it cannot hide a bar.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(parts), fontsize=8,
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def draw_plots(results: ExperimentResults, plot_dir: Path) -> dict[str, bool]:
    """Draws PLOT_NAMES into plot_dir (created); {name: drawn}.  A plot that
    fails is logged and reported as not drawn: never worth losing the report."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    draw = {"loss": lambda path: plot_loss(results.training, path),
            "valid_wer": lambda path: plot_valid_wer(results.training, path),
            "wer_by_method": lambda path: plot_wer_by_method(results.rows, results.parts, path)}
    drawn: dict[str, bool] = {}
    for name in PLOT_NAMES:
        try:
            drawn[name] = draw[name](plot_dir / f"{name}.png")
        except Exception:
            logging.exception(f"plot {name} failed")
            drawn[name] = False
    return drawn
