"""Tables and figures from runner cells: means and sample stds by hand, failures, order, files, the command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from benchmarks import tables
from benchmarks.tables import format_duration, load_cells, main, per_class, table1, table2, write_figures, write_tables

PRETRAININGS = {"ce_region": ("context_encoder", "context"), "random_init": ("random", "none"),
                "autoencoder": ("autoencoder", "reconstruction"), "mean_fill": ("mean_fill", "none")}
HEADLINES = {"classify": ("classification", "Cls mAP (%)"), "knn": ("knn", "kNN top-1 (%)"),
             "inpaint": ("inpainting", "PSNR (dB)")}


def cell(pretraining: str, task: str, seed: int, value: float | None, **extra) -> dict:
    """A cell as the runner writes it; value None makes a failed cell."""
    method, supervision = PRETRAININGS[pretraining]
    kind, name = HEADLINES[task]
    failed = value is None
    return {"suite": "test", "pretraining": pretraining, "method": method, "supervision": supervision,
            "task": task, "kind": kind, "seed": seed, "status": "failed" if failed else "ok",
            "error": "RuntimeError: out of memory" if failed else None,
            "headline": None if failed else {"name": name, "value": value}, "metrics": {},
            "pretrain_seconds": 100.0, "wall_seconds": 1.0, "config_hash": "abc", "git_commit": "0" * 40,
            "versions": {"torch": "2"}, "device": "cpu", **extra}


def inpaint(pretraining: str, seed: int, row: str, l1: float, l2: float, psnr: float) -> dict:
    return cell(pretraining, "inpaint", seed, psnr, metrics={"row": row, "mean_l1": l1, "mean_l2": l2, "psnr": psnr})


@pytest.fixture
def cells() -> list[dict]:
    """ce_region over 3 seeds (one kNN seed failed), random_init (kNN failed), autoencoder (no kNN), inpainting."""
    ce = [cell("ce_region", "classify", s, v, pretrain_seconds=t, per_class={"circle": c, "square": q},
               pretrain_curve=[[0, 1.0 - 0.1 * s], [10, 0.5], [20, 0.3]])
          for s, v, t, c, q in ((0, 30.0, 7000.0, 30, 40), (1, 33.0, 7200.0, 32, 44), (2, 39.0, 7400.0, 34, 48))]
    ce += [cell("ce_region", "knn", 0, 50.0, pretrain_seconds=7000.0), cell("ce_region", "knn", 1, 52.0),
           cell("ce_region", "knn", 2, None)]
    return [*ce, cell("random_init", "classify", 0, 10.0, pretrain_seconds=0.0, per_class={"circle": 5, "square": 15}),
            cell("random_init", "knn", 0, None, pretrain_seconds=0.0),
            cell("autoencoder", "classify", 0, 20.0, pretrain_seconds=204.0),
            inpaint("ce_region", 0, "context encoder (L2)", 10.0, 2.0, 17.0),
            inpaint("ce_region", 1, "context encoder (L2)", 12.0, 2.5, 18.0),
            inpaint("mean_fill", 0, "mean fill", 20.0, 8.0, 11.0)]


def write_cells(results: Path, cells: list[dict]) -> None:
    (results / "cells").mkdir(parents=True, exist_ok=True)
    for c in cells:
        (results / "cells" / f"{c['pretraining']}__{c['task']}__seed{c['seed']}.json").write_text(json.dumps(c))


def test_table2_means_stds_failures_and_order(cells: list[dict]) -> None:
    t = table2(cells)
    assert list(t.columns) == ["pretraining", "method", "supervision", "pretraining time", "Cls mAP (%)",
                               "kNN top-1 (%)"]  # no inpainting (PSNR) column
    assert list(t["pretraining"]) == ["ce_region", "random_init", "autoencoder"]  # no mean_fill: inpainting only
    rows = t.set_index("pretraining")
    # classify 30, 33, 39: mean 34, sample var (16 + 1 + 25) / 2 = 21, std 4.58
    assert rows.loc["ce_region", "Cls mAP (%)"] == "34.0 ± 4.6"
    # kNN 50, 52 and a failed seed left out: mean 51, std sqrt(2) = 1.41
    assert rows.loc["ce_region", "kNN top-1 (%)"] == "51.0 ± 1.4 (2/3 seeds)"
    assert rows.loc["random_init", "Cls mAP (%)"] == "10.0"
    assert rows.loc["random_init", "kNN top-1 (%)"] == "failed"
    assert rows.loc["autoencoder", "kNN top-1 (%)"] == ""
    assert list(rows["pretraining time"]) == ["2.0 h", "0 s", "3.4 min"]  # ce_region: mean of 7000, 7200, 7400 s
    assert rows.loc["ce_region", "method"] == "context_encoder" and rows.loc["ce_region", "supervision"] == "context"


def test_table2_column_order_follows_first_appearance(cells: list[dict]) -> None:
    reordered = [c for c in cells if c["task"] == "knn"] + [c for c in cells if c["task"] != "knn"]
    t = table2(reordered)
    assert list(t.columns)[4:] == ["kNN top-1 (%)", "Cls mAP (%)"]
    assert list(t["pretraining"]) == ["ce_region", "random_init", "autoencoder"]


def test_table2_all_failed_task_keeps_a_column() -> None:
    t = table2([cell("ce_region", "knn", 0, None), cell("ce_region", "classify", 0, 40.0)])
    assert list(t.columns)[4:] == ["knn", "Cls mAP (%)"]  # no headline name known: the task names the column
    assert t.loc[0, "knn"] == "failed"


def test_reference_rows_appended(cells: list[dict]) -> None:
    paper = [{"pretraining": "paper: context encoder", "method": "context_encoder", "supervision": "context",
              "pretraining time": "14 h", "Cls mAP (%)": 56.5, "Det mAP (%)": 44.5}]
    t = table2(cells, reference=paper)
    assert list(t["pretraining"]) == ["ce_region", "random_init", "autoencoder", "paper: context encoder"]
    assert list(t.columns)[-1] == "Det mAP (%)"
    last = t.iloc[-1]
    assert (last["Cls mAP (%)"], last["Det mAP (%)"], last["pretraining time"], last["kNN top-1 (%)"]) == \
        ("56.5", "44.5", "14 h", "")
    assert list(t["Det mAP (%)"][:3]) == ["", "", ""]
    with pytest.raises(ValueError, match="pretraining"):
        table2(cells, reference=[{"Cls mAP (%)": 56.5}])


def test_table1_from_inpainting_cells(cells: list[dict]) -> None:
    t = table1(cells)
    assert list(t.columns) == ["holes", "method", "mean L1 (%)", "mean L2 (%)", "PSNR (dB)", "SSIM"]
    assert list(t["method"]) == ["context encoder (L2)", "mean fill"]
    assert list(t["holes"]) == ["central", "central"]  # cells that do not record their holes: central
    # L1 10, 12: std sqrt(2); L2 2.0, 2.5: std sqrt(0.125) = 0.354; PSNR 17, 18: std 0.707; no SSIM measured
    assert list(t.iloc[0][2:]) == ["11.00 ± 1.41", "2.25 ± 0.35", "17.50 ± 0.71", ""]
    assert list(t.iloc[1][2:]) == ["20.00", "8.00", "11.00", ""]
    assert table1([c for c in cells if c["kind"] != "inpainting"]) is None


def test_table1_groups_rows_by_kind_of_hole_with_ssim() -> None:
    def scored(pre: str, task: str, mask: str, psnr: float, ssim: float | None, fill: float) -> dict:
        metrics = {"row": f"{pre} (L1)", "mask": mask, "mean_l1": 5.0, "mean_l2": 1.0, "psnr": psnr,
                   "mean_fill": {"mean_l1": 20.0, "mean_l2": 8.0, "psnr": fill, "ssim": 0.5}}
        if ssim is not None:
            metrics["ssim"] = ssim
        return cell("ce_region", "inpaint", 0, psnr, metrics=metrics) | {"pretraining": pre, "task": task}

    cells = [scored("ce", "inpaint", "central", 17.0, 0.80, 11.0), scored("gated", "inpaint", "central", 18.0, 0.85, 11.0),
             scored("ce", "inpaint_ff", "freeform", 20.0, 0.90, 14.0),
             scored("gated", "inpaint_ff", "freeform", 22.0, None, 14.0)]
    t = table1(cells)
    assert list(t["holes"]) == ["central"] * 3 + ["freeform"] * 3
    assert list(t["method"]) == ["mean fill", "ce (L1)", "gated (L1)"] * 2  # mean fill measured per kind of hole
    assert list(t["PSNR (dB)"]) == ["11.00", "17.00", "18.00", "14.00", "20.00", "22.00"]
    assert list(t["SSIM"]) == ["0.5000", "0.8000", "0.8500", "0.5000", "0.9000", ""]


def test_per_class(cells: list[dict]) -> None:
    tabs = per_class(cells)
    assert list(tabs) == ["classify"]
    t = tabs["classify"]
    assert list(t.columns) == ["pretraining", "circle", "square"]
    assert t.values.tolist() == [["ce_region", "32.0", "44.0"], ["random_init", "5.0", "15.0"],
                                 ["autoencoder", "", ""]]


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (45.4, "45 s"), (204, "3.4 min"), (3599, "1.0 h"),
                                           (7560, "2.1 h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_load_cells_sorted_and_checked(tmp_path: Path, cells: list[dict]) -> None:
    write_cells(tmp_path, cells)
    loaded = load_cells(tmp_path)
    assert len(loaded) == len(cells)
    assert [c["pretraining"] for c in loaded][:2] == ["autoencoder", "ce_region"]  # by file name
    bad = dict(cells[0], status="done")
    (tmp_path / "cells" / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json.*status 'done'"):
        load_cells(tmp_path)


def test_write_tables_files_and_round_trip(tmp_path: Path, cells: list[dict]) -> None:
    paths = write_tables(tmp_path, cells)
    names = sorted(p.name for p in paths)
    assert names == sorted(["table2.csv", "table2.md", "table2.tex", "table1.csv", "table1.md", "table1.tex",
                            "per_class_classify.csv", "per_class_classify.md", "failed.md"])
    assert all(p.stat().st_size > 0 for p in paths)
    back = pd.read_csv(tmp_path / "table2.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, table2(cells))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table1.csv", dtype=str, keep_default_na=False),
                                  table1(cells))
    md = (tmp_path / "table2.md").read_text()
    assert "| 34.0 ± 4.6" in md and "| 10.0 " in md  # numbers kept as written ("10.0", not "10")
    tex = (tmp_path / "table2.tex").read_text()
    assert r"\begin{tabular}" in tex and r"Cls mAP (\%)" in tex and r"34.0 $\pm$ 4.6" in tex
    assert r"ce\_region" in tex
    failed = (tmp_path / "failed.md").read_text()
    assert "2 of 12 cells failed" in failed
    assert "ce_region / knn / seed 2" in failed and "random_init / knn / seed 0" in failed
    assert "RuntimeError: out of memory" in failed
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_tables_removes_stale_outputs(tmp_path: Path, cells: list[dict]) -> None:
    write_tables(tmp_path, cells)
    ok = [c for c in cells if c["status"] == "ok" and c["kind"] != "inpainting"]
    paths = write_tables(tmp_path, ok)
    assert "failed.md" not in [p.name for p in paths]
    assert not (tmp_path / "failed.md").exists() and not (tmp_path / "table1.csv").exists()


def test_write_figures(tmp_path: Path, cells: list[dict]) -> None:
    paths = write_figures(tmp_path, cells)
    assert [p.name for p in paths] == ["bars.png", "loss_curves.png"]
    for path in paths:
        assert path.parent == tmp_path / "figures" and path.stat().st_size > 0
        with Image.open(path) as image:
            image.load()
            colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
        assert (0x4C, 0x72, 0xB0) in colours  # the first pretraining's colour: bars / lines were drawn
    no_curves = [{k: v for k, v in c.items() if k != "pretrain_curve"} for c in cells]
    assert [p.name for p in write_figures(tmp_path, no_curves)] == ["bars.png"]
    assert not (tmp_path / "figures" / "loss_curves.png").exists()


def test_bar_data_means_and_stds(cells: list[dict]) -> None:
    data = tables.bar_data(cells)
    assert list(data) == ["Cls mAP (%)", "kNN top-1 (%)", "PSNR (dB)"]
    mean, std = data["Cls mAP (%)"]["ce_region"]
    assert mean == pytest.approx(34.0) and std == pytest.approx(21 ** 0.5)
    assert data["Cls mAP (%)"]["random_init"] == (10.0, None)
    assert "random_init" not in data["kNN top-1 (%)"]


def test_main_writes_and_prints(tmp_path: Path, cells: list[dict], capsys: pytest.CaptureFixture) -> None:
    write_cells(tmp_path, cells)
    assert main([str(tmp_path)], prog="cebench table") == 0
    out = capsys.readouterr().out
    assert "| pretraining" in out and "34.0 ± 4.6" in out and "12 cells (2 failed" in out
    assert (tmp_path / "table2.md").exists() and (tmp_path / "figures" / "bars.png").exists()


@pytest.mark.parametrize("content, problem", [("{not json", "invalid cell file"),
                                              (json.dumps({"suite": "x", "pretraining": "p"}), "missing required key")])
def test_main_bad_cell_file(tmp_path: Path, cells: list[dict], caplog: pytest.LogCaptureFixture,
                            content: str, problem: str) -> None:
    write_cells(tmp_path, cells[:2])
    (tmp_path / "cells" / "broken__cell__seed0.json").write_text(content)
    with caplog.at_level(logging.ERROR, logger="cebench"):
        assert main([str(tmp_path)], prog="cebench table") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "broken__cell__seed0.json" in errors[0] and problem in errors[0]
    assert "\n" not in errors[0]
    assert not (tmp_path / "table2.csv").exists()


def test_main_without_cells(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    assert "cells" in caplog.text


def test_mean_fill_row_and_the_plan_order(cells: list[dict], tmp_path: Path) -> None:
    inpaint = [c for c in cells if c["kind"] == "inpainting" and c["pretraining"] != "mean_fill"]
    for c, fill in zip(inpaint, (20.0, 22.0)):
        c["metrics"]["mean_fill"] = {"mean_l1": fill, "mean_l2": 5.0, "psnr": 13.0}
    t = table1(inpaint)
    assert list(t["method"]) == ["mean fill", "context encoder (L2)"]
    assert list(t.iloc[0][2:]) == ["21.00", "5.00", "13.00", ""]  # no std: the same holes measured again
    # load_cells with a plan keeps only planned cells (matching spec hashes), in the plan's order
    (tmp_path / "cells").mkdir()
    for pre, spec in (("random_init", "h1"), ("autoencoder", "h2"), ("ce_region", "h3")):
        (tmp_path / "cells" / f"{pre}__knn__seed0.json").write_text(json.dumps(
            {**cell(pre, "knn", 0, 50.0), "spec_hash": spec}))
    plan = {"random_init__knn__seed0": "stale", "ce_region__knn__seed0": "h3", "autoencoder__knn__seed0": "h2"}
    assert [c["pretraining"] for c in load_cells(tmp_path, plan)] == ["ce_region", "autoencoder"]
    assert [c["pretraining"] for c in load_cells(tmp_path)] == ["autoencoder", "ce_region", "random_init"]
