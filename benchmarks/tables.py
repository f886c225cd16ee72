"""Comparison tables and figures from the benchmark runner's cells (one pretraining x one task x one seed each).

cebench table RESULTS_DIR  (also `python -m benchmarks.tables RESULTS_DIR`)

Reads RESULTS_DIR/cells/*.json and writes into RESULTS_DIR: table2.{csv,md,tex} (the paper's Table 2: one row
per pretraining, one column per task headline metric, mean +- sample std over seeds, with marks: * a difference
from the baseline row that a t-test resolves, † not converged, ‡ fine-tune below its own linear probe; the Markdown
file explains the marks it uses under the table), table2_stats.{csv,md} (a row per pretraining x task: n, mean,
std, 95 % confidence interval, difference from the baseline and p-values), table1.{csv,md,tex} (Table 1,
inpainting) when inpainting cells exist, per_class_<task>.{csv,md}, failed.md when cells failed, and
figures/bars.{png,pdf} and figures/loss_curves.{png,pdf} (benchmarks.figures). Failed cells are left out of the means; an entry whose cells all
failed reads "failed", one with no cell is empty. Outputs of an earlier call that no longer apply are removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import stats as scipy_stats

from pretext.engine.checkpoint import CheckpointError, atomic_write_text

log = logging.getLogger("cebench")

REQUIRED = ("suite", "pretraining", "method", "supervision", "task", "kind", "seed", "status")
STATUSES = ("ok", "failed")
INPAINTING, CLASSIFICATION, PROBE = "inpainting", "classification", "probe"  # task kinds (benchmarks.tasks)
BASE_COLUMNS = ("pretraining", "method", "supervision", "pretraining time")
TABLE1_METRICS = {"mean L1 (%)": "mean_l1", "mean L2 (%)": "mean_l2", "PSNR (dB)": "psnr"}
TABLE1_OPTIONAL = {"SSIM": ("ssim", 4)}  # column -> (metric, digits); cells made before it was measured lack it
# Outputs of an earlier call that a new call may no longer produce; removed so none of them is left stale.
OPTIONAL_OUTPUTS = ("table1.csv", "table1.md", "table1.tex", "table2_stats.csv", "table2_stats.md", "failed.md",
                    "per_class_*.csv", "per_class_*.md")
# Table 2 statistics: a difference from the baseline row is resolved when its t-test gives p < ALPHA.
ALPHA = 0.05
CONFIDENCE = 0.95  # of the interval of each entry's mean (Student t)
RANDOM_METHOD = "random"  # pretext.methods.random_init.RandomInitMethod.name, whose import would pull in the models
LINEAR_PROBE = "Linear"  # how the headline of a frozen linear probe starts ("Linear top-1 (%)")
PAIRED, WELCH, NOT_TESTED = "paired", "welch", "n/a"  # which test decided an entry's mark
RESOLVED, NOT_CONVERGED, BELOW_PROBE = "*", "†", "‡"
STATS_COLUMNS = ("pretraining", "method", "task", "metric", "n", "mean", "std", "ci95_low", "ci95_high", "baseline",
                 "diff", "p_welch", "p_paired", "test", "resolved", "converged", "below_linear_probe")
STATS_FLAGS = ("resolved", "converged", "below_linear_probe")  # true / false / empty
STATS_FORMATS = {"mean": "{:.2f}", "std": "{:.2f}", "ci95_low": "{:.2f}", "ci95_high": "{:.2f}", "diff": "{:+.2f}",
                 "p_welch": "{:.3g}", "p_paired": "{:.3g}"}  # table2_stats.md; the CSV keeps full precision


# ---- reading and checking cells -------------------------------------------------------------------------------

def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_cell(cell: object) -> None:
    """Raise ValueError (without the file name) when a cell lacks a required key or holds an unusable value."""
    if not isinstance(cell, dict):
        raise ValueError(f"a cell is a JSON object, got {type(cell).__name__}")
    missing = [k for k in REQUIRED if k not in cell]
    if missing:
        raise ValueError(f"missing required key(s) {', '.join(missing)}")
    if cell["status"] not in STATUSES:
        raise ValueError(f"status {cell['status']!r} is not one of {', '.join(STATUSES)}")
    if cell["status"] == "ok":
        headline = cell.get("headline")
        if not (isinstance(headline, dict) and isinstance(headline.get("name"), str)
                and _is_number(headline.get("value"))):
            raise ValueError(f"an ok cell needs headline {{name: str, value: number}}, got {headline!r}")
        if cell["kind"] == INPAINTING:
            metrics = cell.get("metrics") or {}
            if not isinstance(metrics.get("row"), str) or not all(_is_number(metrics.get(k))
                                                                  for k in TABLE1_METRICS.values()):
                raise ValueError(f"an inpainting cell needs metrics row, mean_l1, mean_l2, psnr, got {metrics!r}")
    _check_optional(cell)


def _check_optional(cell: dict) -> None:
    per_class = cell.get("per_class")
    if per_class is not None and not (isinstance(per_class, dict) and all(map(_is_number, per_class.values()))):
        raise ValueError(f"per_class must map class -> number, got {per_class!r}")
    curve = cell.get("pretrain_curve")
    if curve is not None and not (isinstance(curve, list) and all(
            isinstance(p, list) and len(p) == 2 and all(map(_is_number, p)) for p in curve)):
        raise ValueError("pretrain_curve must be a list of [step, loss] pairs")
    seconds = cell.get("pretrain_seconds")
    if seconds is not None and not (_is_number(seconds) and seconds >= 0):
        raise ValueError(f"pretrain_seconds must be a number >= 0, got {seconds!r}")
    metrics = cell.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a JSON object, got {metrics!r}")
    # Cells of transfer runs before convergence was recorded lack both flags; null means not measured.
    converged, change = (metrics or {}).get("converged"), (metrics or {}).get("loss_change")
    if converged is not None and not isinstance(converged, bool):
        raise ValueError(f"metrics.converged must be true or false, got {converged!r}")
    if change is not None and not _is_number(change):
        raise ValueError(f"metrics.loss_change must be a number, got {change!r}")


def load_cells(results_dir: Path, planned: dict[str, str] | None = None) -> list[dict]:
    """Every RESULTS_DIR/cells/*.json, sorted by file name; ValueError naming the file for a bad one.

    With `planned` (cell key -> spec hash, as the runner stores in suite.json), only the cells of the suite's
    current plan: files of removed seeds, pretrainings or tasks, or of changed settings, are left out."""
    cells_dir = Path(results_dir) / "cells"
    if not cells_dir.is_dir():
        raise ValueError(f"{cells_dir}: no such directory (the runner writes one JSON file per cell there)")
    cells = []
    for path in sorted(cells_dir.glob("*.json")):
        try:
            cell = json.loads(path.read_text(encoding="utf-8"))
            check_cell(cell)
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: invalid cell file: {exc}") from exc
        if planned is None or planned.get(path.stem) in (cell.get("spec_hash"), "*"):
            cells.append(cell)
    if planned is not None:  # the suite's order: pretrainings, then tasks, as the suite file lists them
        order = {key: i for i, key in enumerate(planned)}
        cells.sort(key=lambda c: order.get(f"{c['pretraining']}__{c['task']}__seed{c['seed']}", len(order)))
    return cells


def read_plan(results_dir: Path) -> tuple[dict[str, str] | None, list[dict] | None]:
    """(planned cells, reference rows) from the runner's RESULTS_DIR/suite.json; (None, None) without one."""
    path = Path(results_dir) / "suite.json"
    if not path.is_file():
        return None, None
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable suite record: {exc}") from exc
    return suite.get("cells"), suite.get("reference") or None


# ---- building tables ------------------------------------------------------------------------------------------

def _group(cells: Iterable[dict], key: Callable[[dict], Hashable]) -> dict[Hashable, list[dict]]:
    """Cells by key, keys in order of first appearance."""
    groups: dict[Hashable, list[dict]] = {}
    for cell in cells:
        groups.setdefault(key(cell), []).append(cell)
    return groups


def _unique(names: dict[Hashable, str], label: Callable[[Hashable], str]) -> dict[Hashable, str]:
    """Names made unique by adding ` [label]` to each one that two keys share."""
    counts = Counter(names.values())
    return {k: f"{n} [{label(k)}]" if counts[n] > 1 else n for k, n in names.items()}


def _failed(cell: dict) -> bool:
    return cell["status"] == "failed"


def _entry(cells: list[dict], value: Callable[[dict], float], digits: int, std: bool = True, marks: str = "") -> str:
    """Mean (+- sample std) over the cells that did not fail, then `marks`, with "(n/N seeds)" when some failed;
    "failed" if all failed, "" without cells."""
    if not cells:
        return ""
    values = [value(c) for c in cells if not _failed(c)]
    if not values:
        return "failed"
    partial = f" ({len(values)}/{len(cells)} seeds)" if len(values) < len(cells) else ""
    if len(values) == 1 or not std:
        return f"{statistics.mean(values):.{digits}f}{marks}{partial}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}{marks}{partial}"


def format_duration(seconds: float) -> str:
    """Human-readable duration: "45 s", "3.4 min", "2.1 h"."""
    if round(seconds) < 60:
        return f"{seconds:.0f} s"
    if round(seconds / 60, 1) < 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _pretraining_time(cells: list[dict]) -> str:
    """Mean over seeds of pretrain_seconds (every task cell of one seed carries the same pretraining)."""
    per_seed: dict[int, float] = {}
    for cell in cells:
        if cell.get("pretrain_seconds") is not None:
            per_seed.setdefault(cell["seed"], cell["pretrain_seconds"])
    return format_duration(statistics.mean(per_seed.values())) if per_seed else ""


def _headline_names(cells: list[dict]) -> dict[str, str]:
    """task -> its headline name (the task's name while no cell of it has one), tasks in order of first appearance."""
    names: dict[str, str | None] = {}
    for cell in cells:
        if names.get(cell["task"]) is None:
            names[cell["task"]] = (cell.get("headline") or {}).get("name")
    return {task: name or task for task, name in names.items()}


def headline_columns(cells: list[dict]) -> dict[str, str]:
    """task -> column name: its headline name (the task's name while no cell of it has one), made unique."""
    return _unique(_headline_names(cells), str)


def reference_rows(paper: list[dict]) -> list[dict]:
    """Published rows as table entries: numbers with 1 decimal, None as ""; each row must name its pretraining."""
    rows = []
    for row in paper:
        if not row.get("pretraining"):
            raise ValueError(f"a reference row needs a 'pretraining' name (e.g. 'paper: context encoder'): {row!r}")
        rows.append({k: "" if v is None else f"{v:.1f}" if _is_number(v) else str(v) for k, v in row.items()})
    return rows


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{c: row.get(c, "") for c in columns} for row in rows], columns=columns, dtype=str)


# ---- Table 2 statistics: spread over seeds, tests against the baseline row, flags -----------------------------

Key = tuple[str, str]  # a Table 2 entry: (pretraining, task)


@dataclass(frozen=True)
class EntryStats:
    """One Table 2 entry (a pretraining x a task) over the seeds whose cells did not fail."""

    pretraining: str
    method: str
    task: str
    kind: str
    metric: str  # the task's headline name
    seeds: tuple[int, ...]
    values: tuple[float, ...]  # headline values, in the order of seeds
    converged: bool | None  # False when a seed's metrics.converged is false; None when no cell records it
    loss_change: float | None  # the largest |metrics.loss_change| among the seeds that did not converge

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None under two seeds."""
        return statistics.stdev(self.values) if self.n > 1 else None

    def ci(self) -> tuple[float, float] | None:
        """The CONFIDENCE interval of the mean (Student t, n - 1 degrees of freedom); None under two seeds."""
        if self.n < 2:
            return None
        half = float(scipy_stats.t.ppf((1 + CONFIDENCE) / 2, self.n - 1)) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def by_seed(self) -> dict[int, float] | None:
        """seed -> value; None when a seed repeats (cells of two runs), which rules out pairing by seed."""
        return dict(zip(self.seeds, self.values)) if len(set(self.seeds)) == self.n else None


@dataclass(frozen=True)
class Comparison:
    """An entry against the baseline row's entry of the same task (two-sided t-tests)."""

    baseline: str
    diff: float  # entry mean - baseline mean
    p_welch: float | None  # Welch's t-test; None under two seeds on either side
    p_paired: float | None  # paired by seed; None unless both ran the same seeds (two or more)
    test: str  # PAIRED, WELCH or NOT_TESTED: whose p decides the mark

    @property
    def p(self) -> float | None:
        return {PAIRED: self.p_paired, WELCH: self.p_welch}.get(self.test)

    @property
    def resolved(self) -> bool | None:
        """p < ALPHA; None when not tested. An undefined p (both sides constant and equal) resolves nothing."""
        return None if self.p is None else bool(self.p < ALPHA)


def _entry_stats(cells: list[dict], metric: str) -> EntryStats:
    ok = [c for c in cells if not _failed(c)]
    flags = [m["converged"] for c in ok if isinstance((m := c.get("metrics") or {}).get("converged"), bool)]
    changes = [abs(m["loss_change"]) for c in ok
               if (m := c.get("metrics") or {}).get("converged") is False and _is_number(m.get("loss_change"))]
    first = cells[0]
    return EntryStats(first["pretraining"], first["method"], first["task"], first["kind"], metric,
                      tuple(c["seed"] for c in ok), tuple(float(c["headline"]["value"]) for c in ok),
                      all(flags) if flags else None, max(changes) if changes else None)


def entry_stats(cells: list[dict]) -> dict[Key, EntryStats]:
    """(pretraining, task) -> EntryStats for every Table 2 entry with cells, row by row, in column order."""
    features = [c for c in cells if c["kind"] != INPAINTING]
    metrics = _headline_names(features)
    entries = {}
    for pretraining, group in _group(features, lambda c: c["pretraining"]).items():
        by_task = _group(group, lambda c: c["task"])
        for task in (t for t in metrics if t in by_task):
            entries[(pretraining, task)] = _entry_stats(by_task[task], metrics[task])
    return entries


def pick_baseline(cells: list[dict], baseline: str | None = None) -> str | None:
    """The Table 2 row the others are tested against: `baseline` (ValueError when no Table 2 cell has that
    pretraining), by default the first pretraining whose cells have method "random"; None without one."""
    features = [c for c in cells if c["kind"] != INPAINTING]
    if baseline is None:
        return next((c["pretraining"] for c in features if c["method"] == RANDOM_METHOD), None)
    names = list(dict.fromkeys(c["pretraining"] for c in features))
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not a pretraining of Table 2; its rows: {', '.join(names)}")
    return baseline


def _pairs(a: EntryStats, b: EntryStats) -> tuple[list[float], list[float]] | None:
    """The two entries' values in seed order when both ran the same seeds, each once; else None."""
    sa, sb = a.by_seed(), b.by_seed()
    if sa is None or sb is None or set(sa) != set(sb):
        return None
    order = sorted(sa)
    return [sa[s] for s in order], [sb[s] for s in order]


def compare(entry: EntryStats, base: EntryStats) -> Comparison | None:
    """entry against base: paired by seed when both ran the same seeds, else Welch; None when one has no value."""
    if not entry.n or not base.n:
        return None
    diff = entry.mean - base.mean
    if entry.n < 2 or base.n < 2:
        return Comparison(base.pretraining, diff, None, None, NOT_TESTED)
    pairs = _pairs(entry, base)
    with warnings.catch_warnings():  # scipy's precision-loss warning for near-identical values: p is kept as given
        warnings.simplefilter("ignore", RuntimeWarning)
        p_welch = float(scipy_stats.ttest_ind(entry.values, base.values, equal_var=False).pvalue)
        p_paired = float(scipy_stats.ttest_rel(*pairs).pvalue) if pairs else None
    return Comparison(base.pretraining, diff, p_welch, p_paired, PAIRED if pairs else WELCH)


def _comparisons(entries: dict[Key, EntryStats], baseline: str | None) -> dict[Key, Comparison]:
    """Each entry of another row against the baseline row's entry of its task, where both have a value."""
    found = {}
    for (pretraining, task), entry in entries.items():
        base = entries.get((baseline, task))
        if pretraining != baseline and base is not None and (comparison := compare(entry, base)) is not None:
            found[(pretraining, task)] = comparison
    return found


def _measure(metric: str) -> str:
    """A headline without its task's word: "Fine-tune top-1 (%)" -> "top-1 (%)"."""
    return metric.split(" ", 1)[-1]


def below_linear_probe(entries: dict[Key, EntryStats]) -> dict[Key, bool]:
    """Fine-tune entry -> whether its mean is below the best frozen linear probe mean of the same pretraining on
    the same measure (top-1 or mAP); only for fine-tune entries with such a probe, both with a value."""
    probes: dict[tuple[str, str], float] = {}
    for e in entries.values():
        if e.kind == PROBE and e.metric.startswith(LINEAR_PROBE) and e.n:
            key = (e.pretraining, _measure(e.metric))
            probes[key] = max(probes.get(key, -math.inf), e.mean)
    return {key: e.mean < probes[(e.pretraining, _measure(e.metric))] for key, e in entries.items()
            if e.kind == CLASSIFICATION and e.n and (e.pretraining, _measure(e.metric)) in probes}


@dataclass(frozen=True)
class Table2Stats:
    """Every Table 2 entry's statistics, its comparison with the baseline row, and its flags."""

    entries: dict[Key, EntryStats]
    baseline: str | None
    comparisons: dict[Key, Comparison]
    below_probe: dict[Key, bool]

    def marks(self, key: Key) -> str:
        """RESOLVED, NOT_CONVERGED and BELOW_PROBE, those that apply to the entry, in that order."""
        comparison, entry = self.comparisons.get(key), self.entries.get(key)
        return "".join(mark for mark, on in ((RESOLVED, comparison is not None and comparison.resolved),
                                             (NOT_CONVERGED, entry is not None and entry.converged is False),
                                             (BELOW_PROBE, self.below_probe.get(key, False))) if on)

    def frame(self) -> pd.DataFrame:
        """The tidy table2_stats table (STATS_COLUMNS): numbers as floats (NaN where none), flags True / False."""
        frame = pd.DataFrame([self._row(key, entry) for key, entry in self.entries.items()],
                             columns=list(STATS_COLUMNS))
        floats = ("mean", "std", "ci95_low", "ci95_high", "diff", "p_welch", "p_paired")
        return frame.astype({"n": int, **dict.fromkeys(floats, float)})

    def _row(self, key: Key, e: EntryStats) -> dict:
        c, ci = self.comparisons.get(key), e.ci()
        return {"pretraining": e.pretraining, "method": e.method, "task": e.task, "metric": e.metric, "n": e.n,
                "mean": e.mean, "std": e.std, "ci95_low": ci[0] if ci else None, "ci95_high": ci[1] if ci else None,
                "baseline": c.baseline if c else None, "diff": c.diff if c else None,
                "p_welch": c.p_welch if c else None, "p_paired": c.p_paired if c else None,
                "test": c.test if c else None, "resolved": c.resolved if c else None, "converged": e.converged,
                "below_linear_probe": self.below_probe.get(key)}

    def legend(self) -> list[str]:
        """A Markdown list item explaining each mark that some entry carries."""
        used = {mark for key in self.entries for mark in self.marks(key)}
        lines = {RESOLVED: self._resolved_line, NOT_CONVERGED: self._converged_line, BELOW_PROBE: self._probe_line}
        return [line() for mark, line in lines.items() if mark in used]

    def _resolved_line(self) -> str:
        tested = {key: c for key, c in self.comparisons.items() if c.test != NOT_TESTED}
        tests = {c.test for c in tested.values()}
        how = ("paired t-test by seed" if tests == {PAIRED} else "Welch's t-test" if tests == {WELCH} else
               "paired t-test by seed where both rows ran the same seeds, else Welch's t-test")
        ns = sorted({self.entries[key].n for key in tested} | {self.entries[(self.baseline, t)].n for _, t in tested})
        seeds = f"{ns[0]} seeds per entry" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} seeds per entry"
        untested = len(tested) < len(self.comparisons)
        return (f"- `{RESOLVED}` differs from the baseline row {self.baseline}: two-sided {how}, p < {ALPHA}, {seeds}"
                + ("; entries with a single seed on either side are not tested" if untested else "")
                + ". Better or worse: the sign of diff in table2_stats.md.")

    def _converged_line(self) -> str:
        changes = [e.loss_change for e in self.entries.values() if e.converged is False and e.loss_change is not None]
        largest = (f"; largest relative change of the training loss over the last tenth of training: "
                   f"{max(changes):.3g}") if changes else ""
        return (f"- `{NOT_CONVERGED}` not converged: the training loss of at least one seed had not settled "
                f"(metrics.converged false{largest}).")

    def _probe_line(self) -> str:
        probes = dict.fromkeys(e.metric for e in self.entries.values()
                               if e.kind == PROBE and e.metric.startswith(LINEAR_PROBE))
        return (f"- `{BELOW_PROBE}` fine-tune mean below the mean of the same pretraining's frozen linear probe "
                f"({', '.join(probes)}).")


def table2_stats(cells: list[dict], baseline: str | None = None) -> Table2Stats:
    """Statistics, baseline comparisons and flags of every Table 2 entry (`baseline`: see pick_baseline)."""
    entries = entry_stats(cells)
    base = pick_baseline(cells, baseline)
    comparisons = _comparisons(entries, base) if base is not None else {}
    return Table2Stats(entries, base, comparisons, below_linear_probe(entries))


def _stats_text(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return fmt.format(value)


def _render_stats(frame: pd.DataFrame, suffix: str) -> str:
    """table2_stats as CSV (full precision, flags true / false / empty) or Markdown (rounded, signed diff)."""
    if suffix == ".csv":
        return frame.assign(**{c: frame[c].map({True: "true", False: "false"}) for c in STATS_FLAGS}).to_csv(
            index=False)
    shown = pd.DataFrame({col: [_stats_text(v, STATS_FORMATS.get(col, "{}")) for v in frame[col]]
                          for col in frame.columns})
    return shown.to_markdown(index=False, disable_numparse=True) + "\n"


def table2(cells: list[dict], reference: list[dict] | None = None, baseline: str | None = None) -> pd.DataFrame:
    """Table 2: a row per pretraining (then the reference rows), a column per task headline; inpainting left out.
    Each entry carries its marks (see Table2Stats.marks) against the baseline row (see pick_baseline)."""
    return _table2_frame(cells, reference, table2_stats(cells, baseline))


def _table2_frame(cells: list[dict], reference: list[dict] | None, stats: Table2Stats) -> pd.DataFrame:
    features = [c for c in cells if c["kind"] != INPAINTING]
    columns = headline_columns(features)
    rows = []
    for pretraining, group in _group(features, lambda c: c["pretraining"]).items():
        by_task = _group(group, lambda c: c["task"])
        rows.append({"pretraining": pretraining, "method": group[0]["method"], "supervision": group[0]["supervision"],
                     "pretraining time": _pretraining_time(group),
                     **{name: _entry(by_task.get(task, []), lambda c: c["headline"]["value"], 1,
                                     marks=stats.marks((pretraining, task)))
                        for task, name in columns.items()}})
    rows += reference_rows(reference or [])
    names = list(dict.fromkeys([*BASE_COLUMNS, *columns.values(), *(k for r in rows for k in r)]))
    return _frame(rows, names)


def table2_markdown(cells: list[dict], reference: list[dict] | None = None, baseline: str | None = None) -> str:
    """table2.md: Table 2 as Markdown, then a line on each mark it uses."""
    stats = table2_stats(cells, baseline)
    return _with_legend(_render(_table2_frame(cells, reference, stats), ".md"), stats)


def _with_legend(markdown: str, stats: Table2Stats) -> str:
    legend = stats.legend()
    return markdown + ("\n" + "\n".join(legend) + "\n" if legend else "")


def _holes(cell: dict) -> str:
    """The hole kind an inpainting cell was scored on (cells before the kind was recorded: central)."""
    return str((cell.get("metrics") or {}).get("mask") or "central")


def table1(cells: list[dict]) -> pd.DataFrame | None:
    """Table 1: per kind of hole, a row per inpainting method (metrics.row), mean L1 / L2 (%), PSNR (dB) and SSIM
    (blank for rows without it); None without inpainting cells. Each kind of hole starts with the rows that do not
    depend on an encoder, measured by the cells on their holes: mean fill (every eval-inpainting cell) and, on
    central holes, nearest-neighbour inpainting with HOG features (nn_inpainting cells): means over those cells."""
    inpainting = [c for c in cells if c["kind"] == INPAINTING]
    if not inpainting:
        return None
    # A row name two pretrainings share anywhere in the table gets the pretraining's name, in every block.
    by_pretraining = _group(inpainting, lambda c: (c["pretraining"], c["task"] == "nn_inpainting"))
    names = _unique({key: next((c["metrics"]["row"] for c in group if (c.get("metrics") or {}).get("row")), key[0])
                     for key, group in by_pretraining.items()}, lambda key: key[0])
    rows = []
    for holes, group_cells in _group(inpainting, _holes).items():
        groups = _group(group_cells, lambda c: (c["pretraining"], c["task"] == "nn_inpainting"))
        block = [{"holes": holes, "method": names[key], **_table1_entries(group, lambda c: c["metrics"])}
                 for key, group in groups.items()]
        for key, label in (("nn_hog", "NN inpainting (HOG)"), ("mean_fill", "mean fill")):
            found = [c for c in group_cells if (c.get("metrics") or {}).get(key)]
            if found:
                block.insert(0, {"holes": holes, "method": label,
                                 **_table1_entries(found, lambda c, key=key: c["metrics"][key], std=False)})
        rows += block
    return _frame(rows, ["holes", "method", *TABLE1_METRICS, *TABLE1_OPTIONAL])


def _table1_entries(cells: list[dict], scores: Callable[[dict], dict], std: bool = True) -> dict[str, str]:
    """The Table 1 columns of a group of cells; an optional score is blank when no cell of the group has it."""
    entries = {col: _entry(cells, lambda c, k=k: scores(c)[k], 2, std) for col, k in TABLE1_METRICS.items()}
    for col, (k, digits) in TABLE1_OPTIONAL.items():
        having = [c for c in cells if _failed(c) or _is_number(scores(c).get(k))]
        entries[col] = _entry(having, lambda c, k=k: scores(c)[k], digits, std) if any(
            not _failed(c) for c in having) else ""
    return entries


def per_class(cells: list[dict]) -> dict[str, pd.DataFrame]:
    """task -> a row per pretraining, a column per class (mean over seeds, 1 decimal), for tasks with per_class."""
    tasks = {c["task"] for c in cells if c.get("per_class")}
    tables = {}
    for task, group in _group((c for c in cells if c["task"] in tasks), lambda c: c["task"]).items():
        classes = list(dict.fromkeys(k for c in group for k in c.get("per_class") or {}))
        rows = []
        for pretraining, pcells in _group(group, lambda c: c["pretraining"]).items():
            row = {"pretraining": pretraining}
            for k in classes:
                having = [c for c in pcells if _failed(c) or k in (c.get("per_class") or {})]
                row[k] = _entry(having, lambda c, k=k: c["per_class"][k], 1, std=False)
            rows.append(row)
        tables[task] = _frame(rows, ["pretraining", *classes])
    return tables


# ---- writing tables -------------------------------------------------------------------------------------------

def _render(frame: pd.DataFrame, suffix: str) -> str:
    if suffix == ".csv":
        return frame.to_csv(index=False)
    if suffix == ".md":  # numparse off: tabulate would print "37.0" as "37"
        return frame.to_markdown(index=False, disable_numparse=True) + "\n"
    return (frame.to_latex(index=False, escape=True).replace("±", r"$\pm$").replace(NOT_CONVERGED, r"$^\dagger$")
            .replace(BELOW_PROBE, r"$^\ddagger$"))


def _write_frame(stem: Path, frame: pd.DataFrame, suffixes: tuple[str, ...]) -> list[Path]:
    paths = [stem.with_name(stem.name + s) for s in suffixes]
    for path in paths:
        atomic_write_text(path, _render(frame, path.suffix))
    return paths


def failed_markdown(cells: list[dict]) -> str:
    """failed.md: each failed cell with its error."""
    failed = [c for c in cells if _failed(c)]
    lines = ["# Failed cells", "", f"{len(failed)} of {len(cells)} cells failed.", ""]
    for c in failed:
        lines += [f"## {c['pretraining']} / {c['task']} / seed {c['seed']}", "", "```",
                  str(c.get("error") or "(no error message recorded)").rstrip(), "```", ""]
    return "\n".join(lines)


def remove_stale(folder: Path, patterns: tuple[str, ...], written: list[Path]) -> None:
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path not in written:
                log.info("removing %s: this run's cells no longer produce it", path)
                path.unlink()


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _write_table2(results_dir: Path, cells: list[dict], reference: list[dict] | None, stats: Table2Stats) -> list[Path]:
    """table2.{csv,md,tex} (the Markdown with its legend) and, for entries with cells, table2_stats.{csv,md}."""
    frame = _table2_frame(cells, reference, stats)
    texts = {"table2.csv": _render(frame, ".csv"), "table2.md": _with_legend(_render(frame, ".md"), stats),
             "table2.tex": _render(frame, ".tex")}
    if stats.entries:
        tidy = stats.frame()
        texts |= {"table2_stats.csv": _render_stats(tidy, ".csv"), "table2_stats.md": _render_stats(tidy, ".md")}
    for name, text in texts.items():
        atomic_write_text(results_dir / name, text)
    return [results_dir / name for name in texts]


RESULTS_COLUMNS = ("suite", "pretraining", "method", "task", "kind", "seed", "metric", "value", "headline")


def results_frame(cells: list[dict]) -> pd.DataFrame:
    """The long-format results.csv: a row per (cell, number): the headline under its table name (headline true)
    and every other numeric metric of the cell under its key (per-class values and nested records left out:
    per_class_<task>.csv has the former); failed cells have no numbers and no rows (failed.md lists them)."""
    rows = []
    for c in cells:
        if _failed(c):
            continue
        head = {k: c[k] for k in ("suite", "pretraining", "method", "task", "kind", "seed")}
        rows.append({**head, "metric": c["headline"]["name"], "value": float(c["headline"]["value"]),
                     "headline": True})
        for key, value in (c.get("metrics") or {}).items():
            if _is_number(value) and not isinstance(value, bool):
                rows.append({**head, "metric": key, "value": float(value), "headline": False})
        if _is_number(c.get("pretrain_seconds")):
            rows.append({**head, "metric": "pretrain_seconds", "value": float(c["pretrain_seconds"]),
                         "headline": False})
    return pd.DataFrame(rows, columns=list(RESULTS_COLUMNS)).astype({"seed": int, "value": float, "headline": bool})


def write_tables(results_dir: Path, cells: list[dict], reference: list[dict] | None = None,
                 baseline: str | None = None) -> list[Path]:
    """Write table2 (marks against the `baseline` row: see pick_baseline), table2_stats, results.csv (every number,
    long format), table1, per-class tables and failed.md atomically into results_dir; the paths written. ValueError, before writing, for an unknown baseline."""
    results_dir = Path(results_dir)
    written = _write_table2(results_dir, cells, reference, table2_stats(cells, baseline))
    atomic_write_text(results_dir / "results.csv", results_frame(cells).to_csv(index=False))
    written.append(results_dir / "results.csv")
    inpainting = table1(cells)
    if inpainting is not None:
        written += _write_frame(results_dir / "table1", inpainting, (".csv", ".md", ".tex"))
    for task, frame in per_class(cells).items():
        written += _write_frame(results_dir / f"per_class_{_slug(task)}", frame, (".csv", ".md"))
    if any(map(_failed, cells)):
        atomic_write_text(results_dir / "failed.md", failed_markdown(cells))
        written.append(results_dir / "failed.md")
    remove_stale(results_dir, OPTIONAL_OUTPUTS, written)
    return written


def bar_data(cells: list[dict]) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Headline name -> pretraining -> (mean, sample std or None for one seed) over the cells that did not fail:
    what figures/bars shows."""
    names = headline_columns(cells)
    data: dict[str, dict[str, tuple[float, float | None]]] = {}
    for (task, pretraining), group in _group(cells, lambda c: (c["task"], c["pretraining"])).items():
        values = [c["headline"]["value"] for c in group if not _failed(c)]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else None
            data.setdefault(names[task], {})[pretraining] = (statistics.mean(values), std)
    return data


# ---- command --------------------------------------------------------------------------------------------------

def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """`cebench table RESULTS_DIR`."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("results_dir", type=Path, help="the runner's results directory (holding cells/*.json)")
    p.add_argument("--baseline", metavar="PRETRAINING", default=None,
                   help="the Table 2 row the others are tested against (default: the first random-init pretraining)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Load the cells, write tables and figures, print Table 2 as Markdown; 2 for an unreadable cell file."""
    from pretext.cli import setup_logging

    setup_logging()
    args = build_parser(prog).parse_args(argv)
    try:
        planned, reference = read_plan(args.results_dir)
        cells = load_cells(args.results_dir, planned)
        if not cells:
            raise ValueError(f"{args.results_dir / 'cells'}: no cell files (*.json) of the suite's plan")
        from .figures import write_figures
        from .report import write_report

        paths = write_tables(args.results_dir, cells, reference, args.baseline) + write_figures(args.results_dir, cells)
        paths.append(write_report(args.results_dir, cells, reference, args.baseline))
    except (ValueError, CheckpointError) as exc:  # a bad cell file or baseline, or results_dir not writable
        log.error("%s", exc)
        return 2
    from .verdict import summary

    print(summary(args.results_dir, cells, reference, args.baseline), end="")
    print(f"{len(paths)} files written in {args.results_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
