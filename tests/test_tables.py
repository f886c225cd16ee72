"""Tables and figures from runner cells: means and sample stds by hand, failures, order, files, the command."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from benchmarks import tables
from benchmarks.tables import (format_duration, load_cells, main, per_class, table1, table2, table2_markdown,
                               table2_stats, write_tables)

PRETRAININGS = {"ce_region": ("context_encoder", "context"), "random_init": ("random", "none"),
                "autoencoder": ("autoencoder", "reconstruction"), "mean_fill": ("mean_fill", "none"),
                "one_seed": ("context_prediction", "relative position")}
HEADLINES = {"classify": ("classification", "Cls mAP (%)"), "knn": ("knn", "kNN top-1 (%)"),
             "inpaint": ("inpainting", "PSNR (dB)"), "linear": ("probe", "Linear mAP (%)")}


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
    assert names == sorted(["table2.csv", "table2.md", "table2.tex", "table2_stats.csv", "table2_stats.md",
                            "table1.csv", "table1.md", "table1.tex", "per_class_classify.csv", "per_class_classify.md",
                            "failed.md", "results.csv"])
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
    assert "| pretraining" in out and "34.0 ± 4.6" in out and "Verdict: 12 cells, 10 ok, 2 failed." in out
    assert (tmp_path / "table2.md").exists() and (tmp_path / "figures" / "bars.png").exists()
    assert (tmp_path / "figures" / "bars.pdf").exists()


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


# ---- Table 2 statistics: confidence intervals, tests against the baseline row, marks, table2_stats ---------------

def runs(pretraining: str, task: str, values: list[float | None], seeds: tuple[int, ...] | None = None,
         **extra) -> list[dict]:
    """A cell per seed (0, 1, ... unless given) with these headline values."""
    return [cell(pretraining, task, s, v, **extra) for s, v in zip(seeds or range(len(values)), values)]


def stats_row(cells: list[dict], pretraining: str, task: str, **kwargs) -> pd.Series:
    return table2_stats(cells, **kwargs).frame().set_index(["pretraining", "task"]).loc[(pretraining, task)]


def legend(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("- `")]


@pytest.fixture
def contrasts() -> list[dict]:
    """Against random_init (10, 11, 12): clearly better, clearly worse, noisy, and a single seed."""
    return (runs("random_init", "classify", [10.0, 11.0, 12.0]) + runs("ce_region", "classify", [30.0, 31.0, 33.0])
            + runs("mean_fill", "classify", [1.0, 2.0, 1.5]) + runs("autoencoder", "classify", [2.0, 30.0, 7.0])
            + runs("one_seed", "classify", [50.0]))


def test_stats_mean_std_and_confidence_interval_by_hand(cells: list[dict]) -> None:
    ce = stats_row(cells, "ce_region", "classify")
    # 30, 33, 39: mean 34, sample std sqrt(21); half-width t(0.975, 2 dof) * std / sqrt(3) with t = 4.3027
    t = stats.t.ppf(0.975, 2)
    assert t == pytest.approx(4.302653, abs=1e-6)
    half = t * math.sqrt(21) / math.sqrt(3)
    assert ce["n"] == 3 and ce["mean"] == pytest.approx(34.0) and ce["std"] == pytest.approx(math.sqrt(21))
    assert ce["ci95_low"] == pytest.approx(34 - half) and ce["ci95_high"] == pytest.approx(34 + half)
    assert ce["ci95_low"] == pytest.approx(22.616, abs=1e-3)
    knn = stats_row(cells, "ce_region", "knn")  # 50, 52 and a failed seed left out
    assert knn["n"] == 2 and knn["mean"] == pytest.approx(51.0) and knn["ci95_high"] == pytest.approx(
        51 + stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))
    one = stats_row(cells, "random_init", "classify")  # one seed: no std, no interval
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci95_low"]) and math.isnan(one["ci95_high"])
    failed = stats_row(cells, "random_init", "knn")
    assert failed["n"] == 0 and math.isnan(failed["mean"]) and failed["metric"] == "kNN top-1 (%)"
    assert ("autoencoder", "knn") not in table2_stats(cells).entries  # no cell: no row


def test_welch_and_paired_p_values() -> None:
    a, b = [30.0, 33.0, 39.0], [10.0, 14.0, 11.0]
    cells = runs("random_init", "classify", b) + runs("ce_region", "classify", a)
    row = stats_row(cells, "ce_region", "classify")
    assert row["baseline"] == "random_init" and row["diff"] == pytest.approx(34.0 - 35 / 3)
    # Welch: t = (mean a - mean b) / sqrt(va / na + vb / nb), Welch-Satterthwaite degrees of freedom
    va, vb = statistics.variance(a), statistics.variance(b)
    se2 = va / 3 + vb / 3
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(se2)
    dof = se2 ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    assert row["p_welch"] == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert row["p_welch"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # the same seeds 0, 1, 2: the paired test decides; t = mean(d) / (sd(d) / sqrt(n)) with n - 1 dof
    d = [x - y for x, y in zip(a, b)]
    t_paired = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(3))
    assert row["p_paired"] == pytest.approx(2 * stats.t.sf(abs(t_paired), 2))
    assert row["test"] == "paired" and row["p_paired"] != pytest.approx(row["p_welch"]) and row["resolved"] is True
    # the baseline ran other seeds: Welch decides and there is no paired p
    shifted = runs("random_init", "classify", b, seeds=(0, 1, 5)) + runs("ce_region", "classify", a)
    row = stats_row(shifted, "ce_region", "classify")
    assert row["test"] == "welch" and math.isnan(row["p_paired"])
    assert row["p_welch"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_clear_differences_starred_noisy_and_single_seed_not(contrasts: list[dict]) -> None:
    t = table2(contrasts).set_index("pretraining")["Cls mAP (%)"]
    assert t["random_init"] == "11.0 ± 1.0"  # the baseline itself: no mark
    assert t["ce_region"] == "31.3 ± 1.5*"  # better
    assert t["mean_fill"] == "1.5 ± 0.5*"  # worse: starred as well, the sign is in the stats table
    assert t["autoencoder"] == "13.0 ± 14.9"  # noisy: 2, 30, 7
    assert t["one_seed"] == "50.0"  # n = 1: no test, never a star
    frame = table2_stats(contrasts).frame().set_index("pretraining")
    assert frame.loc["mean_fill", "diff"] < 0 < frame.loc["ce_region", "diff"]
    assert frame.loc["autoencoder", "resolved"] is False and frame.loc["autoencoder", "p_paired"] > tables.ALPHA
    single = frame.loc["one_seed"]
    assert single["test"] == "n/a" and pd.isna(single["resolved"]) and math.isnan(single["p_welch"])
    assert single["diff"] == pytest.approx(39.0)
    base = frame.loc["random_init"]
    assert pd.isna(base["baseline"]) and pd.isna(base["test"]) and math.isnan(base["diff"])


def test_legend_names_the_test_threshold_baseline_and_seeds(tmp_path: Path, contrasts: list[dict]) -> None:
    write_tables(tmp_path, contrasts)
    md = (tmp_path / "table2.md").read_text()
    lines = legend(md)
    assert len(lines) == 1 and lines[0].startswith("- `*`")
    for words in ("paired t-test by seed", "p < 0.05", "baseline row random_init", "3 seeds per entry",
                  "single seed", "table2_stats"):
        assert words in lines[0], words
    assert "Welch" not in lines[0]
    assert "- `" not in (tmp_path / "table2.csv").read_text()  # the CSV stays a clean table
    assert len(pd.read_csv(tmp_path / "table2.csv")) == 5
    shifted = runs("random_init", "classify", [10.0, 11.0, 12.0], seeds=(0, 1, 7)) + runs(
        "ce_region", "classify", [30.0, 31.0, 33.0])
    (line,) = legend(table2_markdown(shifted))
    assert "two-sided Welch's t-test" in line and "paired" not in line and "single seed" not in line
    noisy = [c for c in contrasts if c["pretraining"] in ("random_init", "autoencoder")]
    assert legend(table2_markdown(noisy)) == []  # no mark used: no legend


def test_baseline_argument_default_and_none(cells: list[dict], contrasts: list[dict]) -> None:
    assert table2_stats(cells).baseline == "random_init"  # the first pretraining with method "random"
    by_hand = table2_stats(cells, baseline="autoencoder")
    assert by_hand.baseline == "autoencoder"
    assert set(by_hand.comparisons) == {("ce_region", "classify"), ("random_init", "classify")}
    with pytest.raises(ValueError, match="baseline 'nope'.*ce_region"):
        table2_stats(cells, baseline="nope")
    t = table2(contrasts, baseline="autoencoder").set_index("pretraining")["Cls mAP (%)"]
    assert "*" not in "".join(t)  # against the noisy row nothing is resolved
    no_random = [c for c in contrasts if c["method"] != "random"]
    frame = table2_stats(no_random).frame()
    assert table2_stats(no_random).baseline is None and frame["baseline"].isna().all()
    assert "*" not in "".join(table2(no_random)["Cls mAP (%)"]) and legend(table2_markdown(no_random)) == []


def test_not_converged_mark(tmp_path: Path) -> None:
    settled, moving = {"converged": True, "loss_change": -0.001}, {"converged": False, "loss_change": -0.12}
    cells = [cell("ce_region", "classify", s, 30.0 + s, metrics=m) for s, m in enumerate((settled, moving, settled))]
    cells += [cell("autoencoder", "classify", s, 20.0 + s, metrics=settled) for s in range(3)]
    cells += runs("random_init", "classify", [10.0, 11.0, 12.0])  # cells from before the flags
    cells += [cell("mean_fill", "classify", 0, 5.0, metrics=settled), cell("mean_fill", "classify", 1, None)]
    t = table2(cells).set_index("pretraining")["Cls mAP (%)"]
    assert list(t) == ["31.0 ± 1.0*†", "21.0 ± 1.0*", "11.0 ± 1.0", "5.0 (1/2 seeds)"]
    frame = table2_stats(cells).frame().set_index("pretraining")
    assert frame.loc["ce_region", "converged"] is False and frame.loc["autoencoder", "converged"] is True
    assert pd.isna(frame.loc["random_init", "converged"]) and frame.loc["mean_fill", "converged"] is True
    write_tables(tmp_path, cells)
    (line,) = [line for line in legend((tmp_path / "table2.md").read_text()) if line.startswith("- `†`")]
    assert "not converged" in line and "0.12" in line
    assert r"31.0 $\pm$ 1.0*$^\dagger$" in (tmp_path / "table2.tex").read_text()
    assert "†" not in "".join(table2([c for c in cells if c["pretraining"] != "ce_region"])["Cls mAP (%)"])


@pytest.mark.parametrize("metrics, problem", [({"converged": "no"}, "metrics.converged"),
                                              ({"converged": False, "loss_change": "big"}, "metrics.loss_change"),
                                              ([1, 2], "metrics must be")])
def test_check_cell_rejects_bad_flags(metrics: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        tables.check_cell(cell("ce_region", "classify", 0, 30.0, metrics=metrics))
    tables.check_cell(cell("ce_region", "classify", 0, 30.0, metrics={"converged": None, "loss_change": None}))


def test_fine_tune_below_its_own_linear_probe(tmp_path: Path) -> None:
    cells = (runs("ce_region", "classify", [30.0, 31.0]) + runs("ce_region", "linear", [35.0, 36.0])
             + runs("autoencoder", "classify", [30.0, 31.0]) + runs("autoencoder", "linear", [20.0, 21.0])
             + runs("autoencoder", "knn", [50.0, 51.0])  # higher, but not a linear probe
             + runs("mean_fill", "classify", [5.0, 6.0]) + runs("mean_fill", "knn", [9.0, 9.5])  # no linear probe
             + runs("one_seed", "classify", [5.0]) + runs("one_seed", "linear", [None]))  # the probe failed
    t = table2(cells).set_index("pretraining")
    assert t.loc["ce_region", "Cls mAP (%)"] == "30.5 ± 0.7‡"
    assert t.loc["ce_region", "Linear mAP (%)"] == "35.5 ± 0.7"
    assert [t.loc[p, "Cls mAP (%)"] for p in ("autoencoder", "mean_fill", "one_seed")] == [
        "30.5 ± 0.7", "5.5 ± 0.7", "5.0"]
    flags = table2_stats(cells).frame().set_index(["pretraining", "task"])["below_linear_probe"]
    assert flags[("ce_region", "classify")] is True and flags[("autoencoder", "classify")] is False
    assert pd.isna(flags[("mean_fill", "classify")]) and pd.isna(flags[("one_seed", "classify")])
    assert pd.isna(flags[("ce_region", "linear")])
    (line,) = legend(table2_markdown(cells))
    assert line.startswith("- `‡`") and "linear probe" in line and "Linear mAP (%)" in line
    # a probe on another measure (top-1 against the fine-tune's mAP) is not compared
    other = [c | {"headline": {"name": "Linear top-1 (%)", "value": 90.0}} if c["task"] == "linear" else c
             for c in cells]
    assert "‡" not in "".join(table2(other)["Cls mAP (%)"])
    write_tables(tmp_path, cells)
    assert r"30.5 $\pm$ 0.7$^\ddagger$" in (tmp_path / "table2.tex").read_text()


def test_older_cells_without_the_new_fields_still_load(tmp_path: Path, cells: list[dict]) -> None:
    old = [c if c["kind"] == "inpainting" else {k: v for k, v in c.items() if k != "metrics"} for c in cells]
    write_cells(tmp_path, old)
    loaded = load_cells(tmp_path)
    write_tables(tmp_path, loaded)
    back = pd.read_csv(tmp_path / "table2_stats.csv")
    assert back["converged"].isna().all() and back["below_linear_probe"].isna().all()
    assert not {"†", "‡"} & set((tmp_path / "table2.md").read_text())


def test_table2_stats_csv_loads_with_numeric_dtypes(tmp_path: Path, contrasts: list[dict]) -> None:
    settled = [c | {"metrics": {"converged": True, "loss_change": 0.0}} for c in contrasts]
    paths = write_tables(tmp_path, settled)
    assert {"table2_stats.csv", "table2_stats.md"} <= {p.name for p in paths}
    back = pd.read_csv(tmp_path / "table2_stats.csv")
    assert list(back.columns) == list(tables.STATS_COLUMNS)
    numbers = ["n", "mean", "std", "ci95_low", "ci95_high", "diff", "p_welch", "p_paired"]
    assert all(pd.api.types.is_numeric_dtype(back[c]) for c in numbers) and back["n"].dtype.kind == "i"
    pd.testing.assert_frame_equal(back[numbers], table2_stats(settled).frame()[numbers])
    assert list(back["pretraining"]) == ["random_init", "ce_region", "mean_fill", "autoencoder", "one_seed"]
    assert list(back["resolved"].fillna("")) == ["", True, True, False, ""]  # true / false / empty
    assert set(back["converged"]) == {True} and list(back["baseline"].fillna("")) == ["", *["random_init"] * 4]
    # pandas reads "n/a" (one seed on a side: no test) as missing, like the baseline row's empty test
    assert list(back["test"].fillna("")) == ["", "paired", "paired", "paired", ""]
    text = (tmp_path / "table2_stats.csv").read_text()
    assert "paired,true,true," in text and ",n/a,," in text
    md = (tmp_path / "table2_stats.md").read_text()
    assert "| +20.33" in md and "| -9.50" in md and "| true" in md and "| n/a" in md


def test_stale_table2_stats_removed(tmp_path: Path, cells: list[dict]) -> None:
    write_tables(tmp_path, cells)
    assert (tmp_path / "table2_stats.csv").exists() and (tmp_path / "table2_stats.md").exists()
    paths = write_tables(tmp_path, [c for c in cells if c["kind"] == "inpainting"])
    assert "table2_stats.csv" not in {p.name for p in paths}
    assert not (tmp_path / "table2_stats.csv").exists() and not (tmp_path / "table2_stats.md").exists()


def test_main_prints_the_legend_and_takes_a_baseline(tmp_path: Path, contrasts: list[dict],
                                                     capsys: pytest.CaptureFixture) -> None:
    write_cells(tmp_path, contrasts)
    assert main([str(tmp_path)], prog="cebench table") == 0
    out = capsys.readouterr().out
    assert "31.3 ± 1.5*" in out and "- `*` differs from the baseline row random_init" in out
    assert (tmp_path / "table2.md").read_text() in out  # the file as written, legend included
    assert main([str(tmp_path), "--baseline", "autoencoder"]) == 0
    assert "baseline row" not in capsys.readouterr().out
    (tmp_path / "table2.csv").unlink()
    assert main([str(tmp_path), "--baseline", "nope"]) == 2
    assert not (tmp_path / "table2.csv").exists()


def test_random_method_is_the_random_init_method() -> None:
    from pretext.methods.random_init import RandomInitMethod

    assert tables.RANDOM_METHOD == RandomInitMethod.name


def test_results_csv_is_long_format_and_loads_as_numbers(tmp_path: Path, cells: list[dict]) -> None:
    write_tables(tmp_path, cells)
    back = pd.read_csv(tmp_path / "results.csv")
    assert list(back.columns) == list(tables.RESULTS_COLUMNS)
    assert back["value"].dtype == float and back["seed"].dtype == int and back["headline"].dtype == bool
    heads = back[back["headline"]]
    ok = [c for c in cells if c["status"] == "ok"]
    assert len(heads) == len(ok)  # one headline per ok cell; the failed ones have none
    ce = heads[(heads["pretraining"] == "ce_region") & (heads["task"] == "classify")].sort_values("seed")
    assert list(ce["value"]) == [30.0, 33.0, 39.0] and set(ce["metric"]) == {"Cls mAP (%)"}
    # the inpainting cells' numeric metrics come along; their text ("row") does not
    psnr = back[(back["task"] == "inpaint") & (back["metric"] == "mean_l2")]
    assert sorted(psnr["value"]) == [2.0, 2.5, 8.0] and "row" not in set(back["metric"])
    pretrain = back[(back["metric"] == "pretrain_seconds") & (back["pretraining"] == "ce_region")]
    assert 7000.0 in set(pretrain["value"])
    # a plot in two lines: the mean headline per pretraining and task
    means = heads.groupby(["pretraining", "task"])["value"].mean()
    assert means[("ce_region", "classify")] == pytest.approx(34.0)
