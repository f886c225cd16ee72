"""Suite figures with matplotlib (benchmarks.figures): files, formats, error bars, one log-scale panel per loss."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from benchmarks import figures
from benchmarks.figures import write_figures

from .test_tables import cell, cells  # noqa: F401  (the fixture)


def test_write_figures_png_and_pdf(tmp_path: Path, cells: list[dict]) -> None:  # noqa: F811
    paths = write_figures(tmp_path, cells)
    assert [p.name for p in paths] == ["bars.png", "bars.pdf", "loss_curves.png", "loss_curves.pdf"]
    for path in paths:
        assert path.parent == tmp_path / "figures"
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
            continue
        with Image.open(path) as image:
            image.load()
            found = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 22)}
        assert (0x4C, 0x72, 0xB0) in found  # the first pretraining's colour: bars / lines were drawn
    pdf = (tmp_path / "figures" / "bars.pdf").read_bytes()
    write_figures(tmp_path, cells)
    assert (tmp_path / "figures" / "bars.pdf").read_bytes() == pdf  # the same cells, the same file
    no_curves = [{k: v for k, v in c.items() if k != "pretrain_curve"} for c in cells]
    assert [p.name for p in write_figures(tmp_path, no_curves)] == ["bars.png", "bars.pdf"]
    assert not (tmp_path / "figures" / "loss_curves.png").exists()
    assert not (tmp_path / "figures" / "loss_curves.pdf").exists()


def test_bars_carry_axis_labels_and_error_bars(cells: list[dict]) -> None:  # noqa: F811
    fig = figures.bar_figure(cells)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["Cls mAP (%)", "kNN top-1 (%)", "PSNR (dB)"]
    classify = axes[0]
    assert [t.get_text() for t in classify.get_xticklabels()] == ["ce_region", "random_init", "autoencoder"]
    assert [round(b.get_height(), 6) for b in classify.patches] == [34.0, 10.0, 20.0]
    # ce_region's 3 seeds give an error bar of one sample std (sqrt(21)) around its mean
    from matplotlib.container import ErrorbarContainer

    (bars,) = [c for c in classify.containers if isinstance(c, ErrorbarContainer)]
    (low, high) = bars.lines[2][0].get_segments()[0]  # the first bar's vertical error line
    assert low[1] == pytest.approx(34.0 - 21 ** 0.5) and high[1] == pytest.approx(34.0 + 21 ** 0.5)
    assert "mean ± std of up to 3 seeds" in classify.get_title()
    assert axes[1].get_title() == "kNN top-1 (%), mean ± std of up to 2 seeds"  # one kNN seed of three failed


def test_one_log_scale_panel_per_kind_of_loss(cells: list[dict]) -> None:  # noqa: F811
    extra = [cell("one_seed", "classify", 0, 25.0, pretrain_curve=[[0, 2.1], [10, 1.5], [20, 1.2]]),
             cell("autoencoder", "classify", 1, 21.0, pretrain_curve=[[0, 0.5], [10, 0.0]])]
    by_kind = figures.curves([*cells, *extra])
    assert set(by_kind) == {"reconstruction loss", "cross-entropy"}
    assert set(by_kind["reconstruction loss"]) == {("ce_region", 0), ("ce_region", 1), ("ce_region", 2),
                                                   ("autoencoder", 1)}
    fig = figures.loss_figure([*cells, *extra])
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes}
    assert scales == {"reconstruction loss": "linear", "cross-entropy": "log"}  # a loss of 0 has no log scale
    assert all(ax.get_xlabel() == "pretraining step" for ax in fig.axes)
    fig = figures.loss_figure(cells)
    assert [ax.get_yscale() for ax in fig.axes] == ["log"] and "log scale" in fig.axes[0].get_ylabel()
