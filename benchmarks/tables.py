"""Comparison tables and figures from the benchmark runner's cells (one pretraining x one task x one seed each).

cebench table RESULTS_DIR  (also `python -m benchmarks.tables RESULTS_DIR`)

Reads RESULTS_DIR/cells/*.json and writes into RESULTS_DIR: table2.{csv,md,tex} (the paper's Table 2: one row
per pretraining, one column per task headline metric, mean +- sample std over seeds), table1.{csv,md,tex} (Table 1,
inpainting) when inpainting cells exist, per_class_<task>.{csv,md}, failed.md when cells failed, and
figures/bars.png and figures/loss_curves.png. Failed cells are left out of the means; an entry whose cells all
failed reads "failed", one with no cell is empty. Outputs of an earlier call that no longer apply are removed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from pretext.engine.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text

log = logging.getLogger("cebench")

REQUIRED = ("suite", "pretraining", "method", "supervision", "task", "kind", "seed", "status")
STATUSES = ("ok", "failed")
INPAINTING = "inpainting"
BASE_COLUMNS = ("pretraining", "method", "supervision", "pretraining time")
TABLE1_METRICS = {"mean L1 (%)": "mean_l1", "mean L2 (%)": "mean_l2", "PSNR (dB)": "psnr"}
TABLE1_OPTIONAL = {"SSIM": ("ssim", 4)}  # column -> (metric, digits); cells made before it was measured lack it
# Outputs of an earlier call that a new call may no longer produce; removed so none of them is left stale.
OPTIONAL_OUTPUTS = ("table1.csv", "table1.md", "table1.tex", "failed.md", "per_class_*.csv", "per_class_*.md")
OPTIONAL_FIGURES = ("bars.png", "loss_curves.png")
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd")
PANEL = (340, 270)  # width, height in pixels of one metric's bar panel
LINE_HEIGHT = 18


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


def _entry(cells: list[dict], value: Callable[[dict], float], digits: int, std: bool = True) -> str:
    """Mean (+- sample std) over the cells that did not fail, with "(n/N seeds)" when some failed; "failed" if all
    failed, "" without cells."""
    if not cells:
        return ""
    values = [value(c) for c in cells if not _failed(c)]
    if not values:
        return "failed"
    partial = f" ({len(values)}/{len(cells)} seeds)" if len(values) < len(cells) else ""
    if len(values) == 1 or not std:
        return f"{statistics.mean(values):.{digits}f}{partial}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}{partial}"


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


def headline_columns(cells: list[dict]) -> dict[str, str]:
    """task -> column name: its headline name (the task's name while no cell of it has one), made unique."""
    names: dict[str, str | None] = {}
    for cell in cells:
        if names.get(cell["task"]) is None:
            names[cell["task"]] = (cell.get("headline") or {}).get("name")
    return _unique({task: name or task for task, name in names.items()}, str)


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


def table2(cells: list[dict], reference: list[dict] | None = None) -> pd.DataFrame:
    """Table 2: a row per pretraining (then the reference rows), a column per task headline; inpainting left out."""
    features = [c for c in cells if c["kind"] != INPAINTING]
    columns = headline_columns(features)
    rows = []
    for pretraining, group in _group(features, lambda c: c["pretraining"]).items():
        by_task = _group(group, lambda c: c["task"])
        rows.append({"pretraining": pretraining, "method": group[0]["method"], "supervision": group[0]["supervision"],
                     "pretraining time": _pretraining_time(group),
                     **{name: _entry(by_task.get(task, []), lambda c: c["headline"]["value"], 1)
                        for task, name in columns.items()}})
    rows += reference_rows(reference or [])
    names = list(dict.fromkeys([*BASE_COLUMNS, *columns.values(), *(k for r in rows for k in r)]))
    return _frame(rows, names)


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
    return frame.to_latex(index=False, escape=True).replace("±", r"$\pm$")


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


def _remove_stale(folder: Path, patterns: tuple[str, ...], written: list[Path]) -> None:
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path not in written:
                log.info("removing %s: this run's cells no longer produce it", path)
                path.unlink()


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def write_tables(results_dir: Path, cells: list[dict], reference: list[dict] | None = None) -> list[Path]:
    """Write table2, table1, per-class tables and failed.md atomically into results_dir; the paths written."""
    results_dir = Path(results_dir)
    written = _write_frame(results_dir / "table2", table2(cells, reference), (".csv", ".md", ".tex"))
    inpainting = table1(cells)
    if inpainting is not None:
        written += _write_frame(results_dir / "table1", inpainting, (".csv", ".md", ".tex"))
    for task, frame in per_class(cells).items():
        written += _write_frame(results_dir / f"per_class_{_slug(task)}", frame, (".csv", ".md"))
    if any(map(_failed, cells)):
        atomic_write_text(results_dir / "failed.md", failed_markdown(cells))
        written.append(results_dir / "failed.md")
    _remove_stale(results_dir, OPTIONAL_OUTPUTS, written)
    return written


# ---- figures (PIL: matplotlib is not a dependency of the project) ---------------------------------------------

def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _colours(cells: list[dict]) -> dict[str, str]:
    """pretraining -> colour, the same in every figure."""
    names = dict.fromkeys(c["pretraining"] for c in cells)
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _y_axis(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], lo: float, hi: float,
            font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Callable[[float], float]:
    """Draw a y axis with 5 ticks and grid lines over box; the value -> pixel row mapping."""
    x0, y0, x1, y1 = box
    hi = hi if hi > lo else lo + 1

    def y(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    for i in range(5):
        v = lo + i * (hi - lo) / 4
        draw.line([(x0, y(v)), (x1, y(v))], fill="#e0e0e0")
        draw.text((x0 - 4, y(v)), f"{v:.3g}", fill="black", font=font, anchor="rm")
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    return y


def _legend(draw: ImageDraw.ImageDraw, origin: tuple[int, int], colours: dict[str, str],
            font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    x, y = origin
    for i, (name, colour) in enumerate(colours.items()):
        row = y + i * LINE_HEIGHT
        draw.rectangle([x, row + 3, x + 12, row + 15], fill=colour)
        draw.text((x + 18, row + 2), name, fill="black", font=font)


def _png(image: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def bar_data(cells: list[dict]) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Headline name -> pretraining -> (mean, sample std or None for one seed) over the cells that did not fail."""
    names = headline_columns(cells)
    data: dict[str, dict[str, tuple[float, float | None]]] = {}
    for (task, pretraining), group in _group(cells, lambda c: (c["task"], c["pretraining"])).items():
        values = [c["headline"]["value"] for c in group if not _failed(c)]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else None
            data.setdefault(names[task], {})[pretraining] = (statistics.mean(values), std)
    return data


def _bar_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str,
               bars: dict[str, tuple[float, float | None]], colours: dict[str, str]) -> None:
    font, (x, y) = _font(), origin
    draw.text((x + PANEL[0] // 2, y + 6), title, fill="black", font=_font(14), anchor="mt")
    plot = (x + 55, y + 30, x + PANEL[0] - 15, y + PANEL[1] - 20)
    ends = [m + s * sign for m, s in ((m, s or 0) for m, s in bars.values()) for sign in (-1, 1)]
    to_y = _y_axis(draw, plot, min(0.0, *ends), max(0.0, *ends) * 1.12, font)
    step = (plot[2] - plot[0]) / len(bars)
    for i, (name, (mean, std)) in enumerate(bars.items()):
        left, right = plot[0] + (i + 0.2) * step, plot[0] + (i + 0.8) * step
        draw.rectangle([left, min(to_y(mean), to_y(0)), right, max(to_y(mean), to_y(0))], fill=colours[name])
        mid = (left + right) / 2
        if std:
            draw.line([(mid, to_y(mean - std)), (mid, to_y(mean + std))], fill="black", width=2)
            for v in (mean - std, mean + std):
                draw.line([(mid - 5, to_y(v)), (mid + 5, to_y(v))], fill="black", width=2)
        draw.text((mid, to_y(mean + (std or 0)) - 3), f"{mean:.1f}", fill="black", font=font, anchor="mb")


def bar_figure(cells: list[dict]) -> Image.Image | None:
    """A panel per headline metric, a bar per pretraining (mean, +- std for several seeds); None without data."""
    data, colours = bar_data(cells), _colours(cells)
    if not data:
        return None
    shown = {name: colours[name] for bars in data.values() for name in bars}
    ncols = min(3, len(data))
    nrows = -(-len(data) // ncols)
    image = Image.new("RGB", (ncols * PANEL[0], nrows * PANEL[1] + 10 + LINE_HEIGHT * len(shown)), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, bars) in enumerate(data.items()):
        _bar_panel(draw, ((i % ncols) * PANEL[0], (i // ncols) * PANEL[1]), title, bars, colours)
    _legend(draw, (15, nrows * PANEL[1] + 5), shown, _font())
    return image


def loss_figure(cells: list[dict]) -> Image.Image | None:
    """Pretraining loss against step, one colour per pretraining (a line per seed); None without curves."""
    curves = {}
    for cell in cells:
        if cell.get("pretrain_curve"):
            curves.setdefault((cell["pretraining"], cell["seed"]), cell["pretrain_curve"])
    if not curves:
        return None
    colours = {name: colour for name, colour in _colours(cells).items() if any(p == name for p, _ in curves)}
    points = [p for curve in curves.values() for p in curve]
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    image = Image.new("RGB", (640, 420 + LINE_HEIGHT * len(colours)), "white")
    draw, font = ImageDraw.Draw(image), _font()
    draw.text((320, 6), "pretraining loss", fill="black", font=_font(14), anchor="mt")
    plot = (70, 30, 620, 380)
    to_y = _y_axis(draw, plot, min(losses), max(losses), font)
    lo = min(steps)
    hi = max(steps) if max(steps) > lo else lo + 1

    def to_x(step: float) -> float:
        return plot[0] + (step - lo) / (hi - lo) * (plot[2] - plot[0])

    for v in (lo, (lo + hi) / 2, hi):
        draw.text((to_x(v), plot[3] + 4), f"{v:.6g}", fill="black", font=font, anchor="mt")
    draw.text((plot[2], plot[3] + 20), "step", fill="black", font=font, anchor="rt")
    for (pretraining, _), curve in curves.items():
        xy = [(to_x(s), to_y(v)) for s, v in curve]
        draw.line(xy if len(xy) > 1 else xy * 2, fill=colours[pretraining], width=2)
    _legend(draw, (plot[0], 410), colours, font)
    return image


def write_figures(results_dir: Path, cells: list[dict]) -> list[Path]:
    """figures/bars.png (headline metrics) and, when cells carry curves, figures/loss_curves.png; the paths."""
    folder = Path(results_dir) / "figures"
    written = []
    for name, image in (("bars.png", bar_figure(cells)), ("loss_curves.png", loss_figure(cells))):
        if image is not None:
            written.append(_png(image, folder / name))
    if folder.is_dir():
        _remove_stale(folder, OPTIONAL_FIGURES, written)
    return written


# ---- command --------------------------------------------------------------------------------------------------

def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """`cebench table RESULTS_DIR`."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("results_dir", type=Path, help="the runner's results directory (holding cells/*.json)")
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
        paths = write_tables(args.results_dir, cells, reference) + write_figures(args.results_dir, cells)
    except (ValueError, CheckpointError) as exc:  # a bad cell file, or results_dir not writable
        log.error("%s", exc)
        return 2
    print(_render(table2(cells, reference), ".md"), end="")
    failed = sum(map(_failed, cells))
    print(f"{len(cells)} cells ({failed} failed{', see failed.md' if failed else ''}) -> "
          f"{len(paths)} files in {args.results_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
