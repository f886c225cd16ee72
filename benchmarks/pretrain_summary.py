"""Summary table of pretraining runs: loss curve end points, held-out metrics, pretraining time, encoder shape.

python -m benchmarks.pretrain_summary RUN_DIR [RUN_DIR ...] [--out results/NAME]  (writes NAME.json and NAME.md)

Each run's exported encoder is loaded (sha256 checked) and run on a zero image, so the table also
shows that the encoders of different methods load into the same class with the same pool5 shape.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from pretext.export import load_encoder

END_ROWS = 5  # logged training rows averaged at each end of the curve


def _curve_ends(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    if not values:
        return None, None
    n = min(END_ROWS, len(values))
    return sum(values[:n]) / n, sum(values[-n:]) / n


def _is_validation(row: dict) -> bool:
    # The trainer logs held-out metrics as rows of their own, holding only val_* values.
    return any(k.startswith("val_") and v for k, v in row.items())


def summarise(run: Path) -> dict:
    """One row: method, data, steps, time, first/last training loss (and accuracy), last held-out metrics."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    encoder, meta = load_encoder(run)
    size = meta["input_size"]
    with torch.no_grad():
        pool5 = tuple(encoder.eval()(torch.zeros(1, 3, size, size)).shape[1:])
    config = json.loads((run / "config.json").read_text())
    row = {"run": run.name, "method": meta["method"], "data": config["data"]["root"] or "demo",
           "steps": meta["pretrain"]["steps"], "images_seen": meta["pretrain"]["images_seen"],
           "wall_s": meta["pretrain"]["wall_seconds"], "device": meta["pretrain"]["device"],
           "encoder": f"{meta['arch']} {size}px pool5 {'x'.join(map(str, pool5))}"}
    held = [r for r in rows if _is_validation(r)]
    for key in ("loss", "acc"):
        first, last = _curve_ends([r for r in rows if not _is_validation(r)], key)
        if first is not None:
            row[f"{key}_first"], row[f"{key}_last"] = round(first, 4), round(last, 4)
    if held:
        row.update({k: round(float(v), 4) for k, v in held[-1].items() if k.startswith("val_") and v})
    return row


def to_markdown(rows: list[dict]) -> str:
    """A Markdown table over the union of the rows' keys."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the table; with --out also write it as JSON and Markdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "metrics.csv").is_file() or not (r / "encoder.json").is_file()]
    if missing:
        p.error(f"not finished run directories (no metrics.csv or encoder.json): {', '.join(missing)}")
    rows = [summarise(r) for r in args.runs]
    table = to_markdown(rows)
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
