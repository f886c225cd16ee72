"""The verdict at the end of `cebench run` / `cebench table`: every line follows from the cells."""

from __future__ import annotations

from pathlib import Path

from benchmarks.tables import main, table2_stats, write_tables
from benchmarks.verdict import summary, verdict
from tests.test_tables import cell, runs, write_cells


def _suite() -> list[dict]:
    """random 10/11/12; ce_region clearly better on classify and worse on knn; autoencoder noisy and not
    converged on one seed; one_seed with a single seed; a failed kNN cell; linear probes for the flags."""
    moving = {"converged": False, "loss_change": -0.2}
    return (runs("random_init", "classify", [10.0, 11.0, 12.0]) + runs("random_init", "knn", [40.0, 41.0, 42.0])
            + runs("random_init", "linear", [5.0, 6.0, 7.0])
            + runs("ce_region", "classify", [30.0, 31.0, 33.0]) + runs("ce_region", "knn", [20.0, 21.0, 22.5])
            + runs("ce_region", "linear", [40.0, 41.0, 42.0])
            + [cell("autoencoder", "classify", s, v, metrics=moving if s == 1 else {"converged": True})
               for s, v in enumerate((2.0, 30.0, 7.0))]
            + runs("one_seed", "classify", [50.0]) + [cell("one_seed", "knn", 0, None)])


def test_verdict_names_what_resolves_what_does_not_and_every_problem(tmp_path: Path) -> None:
    cells = _suite()
    write_tables(tmp_path, cells)
    text = verdict(cells, tmp_path)
    lines = text.splitlines()
    assert lines[0] == f"Verdict: {len(cells)} cells, {len(cells) - 1} ok, 1 failed."
    assert "Against random_init (two-sided" in lines[1] and "p < 0.05" in lines[1]
    stats = table2_stats(cells)
    p_cls = stats.comparisons[("ce_region", "classify")].p
    p_ae = stats.comparisons[("autoencoder", "classify")].p
    assert p_cls < 0.05 and stats.comparisons[("ce_region", "knn")].p < 0.001 and p_ae > 0.05
    (ce,) = [line for line in lines if line.startswith("  ce_region:")]
    assert p_cls < 0.001  # 30, 31, 33 against 10, 11, 12, paired by seed
    assert ce == ("  ce_region: better on classify (+20.3, p < 0.001), linear (+35.0, p < 0.001); "
                  "worse on knn (-19.8, p < 0.001).")
    (ae,) = [line for line in lines if line.startswith("  autoencoder:")]
    assert ae == f"  autoencoder: not resolved on classify (+2.0, p = {p_ae:.2f})."
    (one,) = [line for line in lines if line.startswith("  one_seed:")]
    assert "not tested (one seed) on classify" in one
    assert "Not converged: autoencoder / classify." in lines
    # ce_region's fine-tune (31.3) is below its own linear probe (41.0); random_init's (11) is above its probe (6)
    assert "Fine-tune below its own linear probe: ce_region / classify." in lines
    assert any(line.startswith("Failed: one_seed / knn / seed 0: RuntimeError: out of memory") for line in lines)
    assert lines[-1].startswith(f"Files in {tmp_path}: table2.md, table2_stats.md, table2.csv, results.csv")


def test_verdict_without_a_baseline_or_problems(tmp_path: Path) -> None:
    cells = runs("ce_region", "classify", [30.0, 31.0]) + runs("autoencoder", "classify", [20.0, 21.0])
    text = verdict(cells, tmp_path)
    assert "No random-init row" in text and "--baseline" in text
    assert "Not converged: none." in text and "not checked (no linear probe" in text
    assert "Failed:" not in text and "none yet" in text
    # an explicit baseline row is used
    assert "Against autoencoder" in verdict(cells, tmp_path, baseline="autoencoder")


def test_summary_prints_the_tables_then_the_verdict(tmp_path: Path, capsys) -> None:
    cells = _suite() + [cell("ce_region", "inpaint", 0, 17.0, metrics={"row": "context encoder (L2)",
                                                                         "mean_l1": 10.0, "mean_l2": 2.0,
                                                                         "psnr": 17.0})]
    text = summary(tmp_path, cells)
    assert text.index("Table 1 (inpainting)") < text.index("Table 2 (features)") < text.index("Verdict:")
    assert "| pretraining" in text and "31.3 ± 1.5*‡" in text
    write_cells(tmp_path, cells)
    assert main([str(tmp_path)], prog="cebench table") == 0
    out = capsys.readouterr().out
    assert "Verdict:" in out and "Failed: one_seed / knn / seed 0" in out and "files written in" in out


def test_verdict_says_what_it_could_not_compare(tmp_path: Path) -> None:
    cells = (runs("random_init", "classify", [10.0, 11.0, 12.0]) + runs("ce_region", "classify", [30.0, 31.0, 33.0])
             + runs("ce_region", "knn", [20.0, 21.0, 22.0]))  # random init has no kNN entry
    text = verdict(cells, tmp_path)
    assert "not compared (random_init has no value there): knn." in text
    failed = [cell("random_init", "classify", s, None) for s in range(3)] + runs("ce_region", "classify", [30.0, 31.0])
    assert "nothing to compare: random_init has no value" in verdict(failed, tmp_path)
    welch = runs("random_init", "classify", [10.0, 11.0, 12.0]) + runs("ce_region", "classify", [30.0, 31.0],
                                                                         seeds=(5, 6))
    assert "two-sided Welch's t-test" in verdict(welch, tmp_path)


def test_verdict_of_a_one_seed_suite_says_nothing_is_tested(tmp_path: Path) -> None:
    cells = runs("random_init", "classify", [10.0]) + runs("ce_region", "classify", [30.0])
    text = verdict(cells, tmp_path)
    assert "Against random_init (not tested: a single seed on one side of every comparison" in text
    assert "  ce_region: not tested (one seed) on classify." in text
