"""The verdict printed at the end of `cebench run` and `cebench table`: what the tables say, in a few lines.

For every Table 2 row against the baseline row (random init by default): which of its entries differ beyond their
seed spread (the tables' t-test), by how much and in which direction; then the cells that failed, the entries that
did not converge, the fine-tunes below their own frozen linear probe, and where the files are. Everything comes
from `tables.table2_stats`, so the verdict and the tables cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from .tables import (ALPHA, CLASSIFICATION, INPAINTING, NOT_TESTED, PAIRED, WELCH, Comparison, EntryStats,
                     Table2Stats, _failed, table1, table2_markdown, table2_stats)


def _p(p: float | None) -> str:
    if p is None or p != p:  # untested, or undefined (both rows constant and equal)
        return ""
    return ", p < 0.001" if p < 0.001 else f", p = {p:.3f}" if p < 0.1 else f", p = {p:.2f}"


def _difference(entry: EntryStats, c: Comparison) -> str:
    unit = " dB" if "dB" in entry.metric else ""
    return f"{entry.task} ({c.diff:+.1f}{unit}{_p(c.p)})"


def _row_lines(stats: Table2Stats) -> list[str]:
    lines = []
    rows = list(dict.fromkeys(pretraining for pretraining, _ in stats.entries))
    for row in rows:
        if row == stats.baseline:
            continue
        found = {key: c for key, c in stats.comparisons.items() if key[0] == row}
        if not found:
            continue
        better = [_difference(stats.entries[k], c) for k, c in found.items() if c.resolved and c.diff > 0]
        worse = [_difference(stats.entries[k], c) for k, c in found.items() if c.resolved and c.diff < 0]
        unresolved = [_difference(stats.entries[k], c) for k, c in found.items() if c.resolved is False]
        untested = [k[1] for k, c in found.items() if c.test == NOT_TESTED]
        parts = ([f"better on {', '.join(better)}"] if better else []) + \
                ([f"worse on {', '.join(worse)}"] if worse else []) + \
                ([f"not resolved on {', '.join(unresolved)}"] if unresolved else []) + \
                ([f"not tested (one seed) on {', '.join(untested)}"] if untested else [])
        lines.append(f"  {row}: " + "; ".join(parts) + ".")
    return lines


def verdict(cells: list[dict], results_dir: Path, baseline: str | None = None) -> str:
    """The verdict text for a suite's cells (the files it names are those `write_tables` writes)."""
    lines = []
    failed = [c for c in cells if _failed(c)]
    lines.append(f"Verdict: {len(cells)} cells, {len(cells) - len(failed)} ok, {len(failed)} failed.")
    features = [c for c in cells if c["kind"] != INPAINTING]
    if features:
        stats = table2_stats(cells, baseline)
        if stats.baseline is None:
            lines.append("No random-init row: nothing to test the rows against (set a baseline with "
                         "`cebench table DIR --baseline ROW`).")
        else:
            tests = {c.test for c in stats.comparisons.values() if c.test != NOT_TESTED}
            how = ("paired t-test by seed" if tests == {PAIRED} else "Welch's t-test" if tests == {WELCH} else
                   "paired t-test by seed where both rows ran the same seeds, else Welch's t-test")
            if tests:
                lines.append(f"Against {stats.baseline} (two-sided {how}; resolved means p < {ALPHA}; differences "
                             f"in the entries' own units):")
            else:
                lines.append(f"Against {stats.baseline} (not tested: a single seed on one side of every comparison; "
                             f"run more seeds to resolve differences):")
            base_tasks = {t for (p, t), e in stats.entries.items() if p == stats.baseline and e.n}
            lines += _row_lines(stats) or [f"  nothing to compare: {stats.baseline} has no value" if not base_tasks
                                           else "  no other row has an entry of the same task."]
            alone = sorted({t for (p, t), e in stats.entries.items() if e.n and t not in base_tasks})
            if alone and base_tasks:
                lines.append(f"  not compared ({stats.baseline} has no value there): {', '.join(alone)}.")
        not_converged = [f"{p} / {t}" for (p, t), e in stats.entries.items() if e.converged is False]
        below = [f"{p} / {t}" for (p, t), flag in stats.below_probe.items() if flag]
        lines.append("Not converged: " + (", ".join(not_converged) if not_converged else "none") + ".")
        fine_tunes = [k for k, e in stats.entries.items() if e.kind == CLASSIFICATION]
        if stats.below_probe:
            lines.append("Fine-tune below its own linear probe: " + (", ".join(below) if below else "none") + ".")
        elif fine_tunes:
            lines.append("Fine-tune below its own linear probe: not checked (no linear probe in this suite).")
    for c in failed:
        error = str(c.get("error") or "").strip().splitlines()
        lines.append(f"Failed: {c['pretraining']} / {c['task']} / seed {c['seed']}: {error[-1] if error else '?'}")
    names = ["table2.md", "table2_stats.md", "table2.csv", "results.csv", "table1.md", "table1.csv", "failed.md",
             "figures"]
    shown = [n for n in names if (Path(results_dir) / n).exists()]
    shown += ["report.html"] if shown else []  # written with the tables, after this text is made
    lines.append(f"Files in {results_dir}: " + (", ".join(shown) if shown else "none yet") + ".")
    return "\n".join(lines) + "\n"


def summary(results_dir: Path, cells: list[dict], reference: list[dict] | None = None,
            baseline: str | None = None) -> str:
    """What the terminal shows at the end: Table 1 (when the suite has inpainting cells), Table 2, the verdict."""
    parts = []
    inpainting = table1(cells)
    if inpainting is not None:
        parts.append("Table 1 (inpainting)\n\n" + inpainting.to_markdown(index=False) + "\n")
    if any(c["kind"] != INPAINTING for c in cells):
        parts.append("Table 2 (features)\n\n" + table2_markdown(cells, reference, baseline))
    parts.append(verdict(cells, results_dir, baseline))
    return "\n".join(parts)
