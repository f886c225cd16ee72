"""report.html: written by `cebench table` from real cells, self-contained, deterministic, escaping what it shows,
and rendered by a real browser (headless Chromium, where installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.tables import main as table_main

DEMO = Path(__file__).resolve().parents[1] / "results" / "demo"


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """A copy of the committed demo suite's cells and plan (31 real cells: Table 1, Table 2, grids)."""
    out = tmp_path / "demo"
    shutil.copytree(DEMO / "cells", out / "cells")
    shutil.copy(DEMO / "suite.json", out / "suite.json")
    shutil.copytree(DEMO / "figures", out / "figures")  # the grids come with the cells
    return out


def test_cebench_table_writes_a_self_contained_deterministic_report(results: Path) -> None:
    assert table_main([str(results)]) == 0
    page = (results / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Suite demo" in page
    for heading in ("Verdict", "Table 2: features", "Table 1: inpainting", "Figures", "Failed cells", "Cells"):
        assert f"<h2>{heading}</h2>" in page
    for row in ("ce_region", "autoencoder", "context_prediction", "supervised", "random", "gated"):
        assert f"<td>{row}</td>" in page
    assert "Fine-tune top-1 (%)" in page and "Verdict: 31 cells, 31 ok, 0 failed." in page
    pngs = sorted((results / "figures").glob("*.png"))
    assert len(pngs) >= 3 and page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'(src|href)="(?!data:)[^"#]', page)  # nothing to fetch: the file travels alone
    assert page.count("<tr class=\"failed\">") == 0
    assert "<td>None</td>" not in page  # a missing value (one seed: no std, no test) is a blank cell
    assert page.count('<div class="wide"><table') == page.count("<table")  # wide tables scroll, not overflow
    first = (results / "report.html").read_bytes()
    assert table_main([str(results)]) == 0 and (results / "report.html").read_bytes() == first  # same cells, same bytes


def test_failed_cells_are_shown_with_their_escaped_errors(results: Path) -> None:
    path = results / "cells" / "random__knn__seed0.json"
    cell = json.loads(path.read_text())
    cell.update(status="failed", error="<script>alert(1)</script> out of memory", headline=None, metrics=None)
    path.write_text(json.dumps(cell))
    assert table_main([str(results)]) == 0
    page = (results / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; out of memory" in page
    assert page.count('<tr class="failed">') == 1 and "<h3>random / knn / seed 0</h3>" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "headless_shell"):
        if path := shutil.which(name):
            return path
    return None


def test_the_report_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); CI installs it")
    assert table_main([str(results)]) == 0
    url = (results / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path}/p"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    # the parsed page: the tables' cells and every image element made it into the DOM
    assert re.search(r"<td>supervised</td>", dom) and "Table 2: features" in dom
    assert dom.count("<img") == len(list((results / "figures").glob("*.png")))
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,1600", url], capture_output=True,
                   timeout=120)
    assert shot.is_file()
    with Image.open(shot) as img:
        grey = img.convert("L")
        low, high = grey.getextrema()
        assert img.size == (1280, 1600) and high - low > 100  # text and table rules on a white page, not blank
        dark = sum(grey.histogram()[:128]) / (img.size[0] * img.size[1])
        assert 0.005 < dark < 0.5, dark
