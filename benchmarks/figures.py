"""Summary figures of a suite's cells with matplotlib, each as PNG (for reading) and PDF (for papers).

- `figures/bars.{png,pdf}`: a panel per headline metric (Table 2's columns and Table 1's PSNR), a bar per
  pretraining with its mean over seeds and, with several seeds, an error bar of one sample standard deviation;
  the axis label names the metric, the title the number of seeds.
- `figures/loss_curves.{png,pdf}`: the pretraining loss against the step, one panel per kind of loss (the
  reconstruction losses of the encoder-decoders, the cross-entropy of the supervised and context-prediction
  rows, the free-form model's L1 + adversarial total), on a log scale, one line per pretraining and seed.

Colours follow the pretraining, the same in every figure. Figures are drawn on their own Agg canvas (no pyplot, no
global backend change, nothing to close). Outputs of an earlier call that no longer apply are
removed (`cebench table` rebuilds them from the cells).
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pretext.engine.checkpoint import atomic_write_bytes

from .tables import bar_data, headline_columns, remove_stale

FORMATS = ("png", "pdf")
FIGURES = tuple(f"{stem}.{fmt}" for stem in ("bars", "loss_curves") for fmt in FORMATS)
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd")
# The loss each pretext method's curve records (pretext/methods): the panel its curve goes in.
LOSS_KINDS = {"context_encoder": "reconstruction loss", "autoencoder": "reconstruction loss",
              "supervised": "cross-entropy", "context_prediction": "cross-entropy",
              "gated_inpainting": "L1 + adversarial (generator total)"}


def colours(cells: list[dict]) -> dict[str, str]:
    """pretraining -> colour, in the order the cells first name them."""
    names = dict.fromkeys(c["pretraining"] for c in cells)
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _seeds(cells: list[dict]) -> dict[str, int]:
    """Headline column -> how many seeds its bars average (the most of any bar)."""
    columns, seeds = headline_columns(cells), {}
    for c in cells:
        if c.get("status") == "ok":
            seeds.setdefault(columns[c["task"]], {}).setdefault(c["pretraining"], set()).add(c["seed"])
    return {column: max(len(s) for s in rows.values()) for column, rows in seeds.items()}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def bar_figure(cells: list[dict]) -> Figure | None:
    """A panel per headline metric, a bar per pretraining (mean, +- one std with several seeds); None without data."""
    data, palette = bar_data(cells), colours(cells)
    if not data:
        return None
    ncols = min(3, len(data))
    nrows = -(-len(data) // ncols)
    fig = _figure(4.2 * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    seeds = _seeds(cells)
    for ax, (metric, bars) in zip(axes.flat, data.items()):
        names = list(bars)
        means = [bars[n][0] for n in names]
        errors = [bars[n][1] or 0.0 for n in names]
        ax.bar(names, means, yerr=errors if any(errors) else None, capsize=4,
               color=[palette[n] for n in names], edgecolor="black", linewidth=0.5)
        for x, (mean, err) in enumerate(zip(means, errors)):
            ax.annotate(f"{mean:.1f}", (x, mean + err), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(metric)
        n = seeds.get(metric, 1)
        ax.set_title(metric if n == 1 else f"{metric}, mean ± std of up to {n} seeds", fontsize=10)
        ax.tick_params(axis="x", labelrotation=35, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
    for ax in list(axes.flat)[len(data):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def curves(cells: list[dict]) -> dict[str, dict[tuple[str, int], list[list[float]]]]:
    """Kind of loss -> (pretraining, seed) -> [[step, loss], ...] of the cells that carry a pretraining curve."""
    out: dict[str, dict[tuple[str, int], list[list[float]]]] = {}
    for cell in cells:
        if cell.get("pretrain_curve"):
            kind = LOSS_KINDS.get(cell["method"], f"{cell['method']} loss")
            out.setdefault(kind, {}).setdefault((cell["pretraining"], cell["seed"]), cell["pretrain_curve"])
    return out


def loss_figure(cells: list[dict]) -> Figure | None:
    """Pretraining loss against step, a panel per kind of loss, log scale; None without curves."""
    by_kind, palette = curves(cells), colours(cells)
    if not by_kind:
        return None
    fig = _figure(4.6 * len(by_kind), 3.6)
    axes = fig.subplots(1, len(by_kind), squeeze=False)
    for ax, (kind, lines) in zip(axes.flat, by_kind.items()):
        labelled = set()
        for (pretraining, seed), curve in lines.items():
            ax.plot([p[0] for p in curve], [p[1] for p in curve], color=palette[pretraining], linewidth=1.2,
                    marker="." if len(curve) < 3 else None, label=None if pretraining in labelled else pretraining)
            labelled.add(pretraining)
        if all(p[1] > 0 for c in lines.values() for p in c):  # a loss that reaches 0 or below stays linear
            ax.set_yscale("log")
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("training loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _save(fig: Figure, stem: Path) -> list[Path]:
    written = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        # no creation date in the PDF: the same cells give the same bytes
        fig.savefig(buf, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def write_figures(results_dir: Path, cells: list[dict]) -> list[Path]:
    """figures/bars.{png,pdf} and, when cells carry curves, figures/loss_curves.{png,pdf}; the paths written."""
    folder = Path(results_dir) / "figures"
    written = []
    for stem, draw in (("bars", bar_figure), ("loss_curves", loss_figure)):
        fig = draw(cells)
        if fig is not None:
            written += _save(fig, folder / stem)
    if folder.is_dir():
        remove_stale(folder, FIGURES, written)
    return written
