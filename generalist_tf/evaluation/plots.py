"""Plots of the evaluation: accuracy vs epsilon and the natural-vs-robust trade-off."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from generalist_tf import files


def _new_axes(title: str, xlabel: str, ylabel: str):
    # A Figure with its own Agg canvas: no pyplot, no global backend state, safe in threads.
    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def plot_epsilon_curve(curve: dict, norm: str, path: str) -> None:
    """Writes the accuracy-vs-epsilon curve of one norm as a PNG."""
    figure, axes = _new_axes(
        f"{curve['attack']}: accuracy vs epsilon ({norm})", "epsilon", "accuracy (%)"
    )
    axes.plot(curve["epsilons"], [100 * a for a in curve["accuracies"]], marker="o")
    axes.set_ylim(0, 100)
    with files.staged(path) as staging:
        figure.savefig(staging)


def plot_tradeoff(
    points: dict[str, tuple[float, float]],
    path: str,
    *,
    robust: str = "robust accuracy",
    spread: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Writes a natural-vs-robust accuracy scatter of several models as a PNG.

    Args:
      points: model name -> (clean accuracy, robust accuracy), fractions in [0, 1].
      path: the PNG to write.
      robust: what the robust accuracy is (the x axis label).
      spread: model name -> (clean, robust) standard deviations, fractions; drawn as error bars.
    """
    if not points:
        raise ValueError("plot_tradeoff needs at least one model")
    figure, axes = _new_axes(f"Natural vs {robust}", f"{robust} (%)", "clean accuracy (%)")
    for name, (clean, robust_accuracy) in points.items():
        clean_std, robust_std = (spread or {}).get(name, (0.0, 0.0))
        axes.errorbar(
            [100 * robust_accuracy],
            [100 * clean],
            xerr=[100 * robust_std],
            yerr=[100 * clean_std],
            fmt="o",
            capsize=3,
            label=name,
        )
    # A legend beside the axes, not labels beside the points: close points would print over
    # each other, and a legend inside the axes would hide some.
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    with files.staged(path) as staging:
        figure.savefig(staging, bbox_inches="tight")
