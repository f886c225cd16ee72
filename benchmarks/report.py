"""report.html: a suite's results in one self-contained page to open in a browser or send to a colleague.

The page holds the verdict (what the terminal prints at the end of `cebench run`), Table 2 with its legend and the
statistics behind its marks, Table 1, every figure and grid of `figures/` (PNG, inlined as data: URIs, so the file
travels alone), the failed cells with their errors, and one provenance row per cell (status, headline number, wall
time, precision, device, commit). `cebench run` and `cebench table` write it beside the tables; the same cells give
the same bytes (no time stamp).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from pretext.engine.checkpoint import atomic_write_text

from .tables import Table2Stats, _failed, _table2_frame, table1, table2_stats
from .verdict import verdict

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
div.wide { overflow-x: auto; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }
th { background: #eef; } tr.failed td { background: #fdd; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; } figure img { max-width: 560px; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _table(frame: pd.DataFrame | None, css: str) -> str:
    if frame is None or frame.empty:
        return "<p>(none)</p>"
    frame = frame.astype(object).where(frame.notna(), "")  # a missing value is blank, not "None"
    return f'<div class="wide">{frame.to_html(index=False, escape=True, classes=css, border=0)}</div>'


def _legend(stats: Table2Stats) -> str:
    """The marks' legend under Table 2 (that of table2.md)."""
    lines = [line.removeprefix("- ").replace("`", "") for line in stats.legend()]
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>" if lines else ""


def _figures(results_dir: Path) -> str:
    folder = results_dir / "figures"
    images = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not images:
        return "<p>(none)</p>"
    return "\n".join(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption>'
                     f"</figure>" for p in images)


def _provenance(cells: list[dict]) -> str:
    rows = []
    for c in sorted(cells, key=lambda c: (c["pretraining"], c["task"], c["seed"])):
        head = c.get("headline") or {}
        value = head.get("value")
        metrics = c.get("metrics") or {}
        cols = [f"{c['pretraining']} / {c['task']} / seed {c['seed']}", c.get("status", ""),
                head.get("name", ""), "" if value is None else f"{value:.2f}",
                "" if c.get("wall_seconds") is None else f"{c['wall_seconds']:.1f}",
                metrics.get("precision") or "", c.get("device") or "", (c.get("git_commit") or "")[:10]]
        css = ' class="failed"' if _failed(c) else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cols) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("cell", "status", "headline", "value", "seconds", "precision", "device",
                                              "commit"))
    return (f'<div class="wide"><table class="cells"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table></div>")


def _failures(cells: list[dict]) -> str:
    failed = [c for c in cells if _failed(c)]
    if not failed:
        return "<p>None: every cell finished.</p>"
    return "\n".join(f"<h3>{html.escape(c['pretraining'])} / {html.escape(c['task'])} / seed {c['seed']}</h3>"
                     f"<pre>{html.escape(str(c.get('error') or '(no error message recorded)'))}</pre>" for c in failed)


def render_report(results_dir: Path, cells: list[dict], reference: list[dict] | None = None,
                  baseline: str | None = None) -> str:
    """The report's HTML for the cells of one results directory."""
    results_dir = Path(results_dir)
    name = str(cells[0].get("suite") or results_dir.name) if cells else results_dir.name
    features = [c for c in cells if c.get("kind") != "inpainting"]
    parts = [f"<h1>Suite {html.escape(name)}</h1>",
             f"<p>{len(cells)} cells, {sum(not _failed(c) for c in cells)} ok, {sum(_failed(c) for c in cells)} "
             f"failed; results directory <code>{html.escape(str(results_dir))}</code>.</p>",
             "<h2>Verdict</h2>", f"<pre>{html.escape(verdict(cells, results_dir, baseline))}</pre>"]
    if features:
        stats = table2_stats(cells, baseline)  # once: the table, its legend and the statistics share it
        parts += ["<h2>Table 2: features</h2>", _table(_table2_frame(cells, reference, stats), "table2"),
                  _legend(stats), "<h3>Statistics behind the marks</h3>", _table(stats.frame().round(3),
                                                                                 "table2-stats")]
    inpainting = table1(cells)
    if inpainting is not None:
        parts += ["<h2>Table 1: inpainting</h2>", _table(inpainting, "table1")]
    parts += ["<h2>Figures</h2>", _figures(results_dir), "<h2>Failed cells</h2>", _failures(cells),
              "<h2>Cells</h2>", _provenance(cells)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>cebench: {html.escape(name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(results_dir: Path, cells: list[dict], reference: list[dict] | None = None,
                 baseline: str | None = None) -> Path:
    """results_dir/report.html (atomic); its path."""
    path = Path(results_dir) / "report.html"
    atomic_write_text(path, render_report(results_dir, cells, reference, baseline))
    return path
