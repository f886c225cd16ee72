"""One table from the output directories of the transfer commands: fine-tuning, detection, segmentation, probes,
retrieval, NN inpainting.

python -m benchmarks.transfer_summary OUT_DIR [OUT_DIR ...] [--out results/NAME]  (writes NAME.json and NAME.md)

Each OUT_DIR holds the `metrics.json` of `cebench transfer classify|detect|segment`, `cebench probe`,
`cebench retrieve`, `cebench nn-inpaint` or `cebench eval-inpainting`. A kNN probe gives one row per k, a low-shot SVM probe one row per shot count (mean +- std
over its draws). Columns: the encoder (run directory name and method), the task, the training / test image
counts, and the task's numbers: top-1 (%), the three VOC mAPs (%), precision@k (%), or mean L1 / L2 (%) and
PSNR (dB) (and SSIM) with mean fill's on the same holes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

MAPS = ("map_voc07_11pt", "map_area", "map_sklearn")


def _scores(m: dict) -> dict:
    """top-1 and / or the three mAPs of a result dict, rounded."""
    return {k: round(m[k], 2) for k in ("top1", *MAPS) if isinstance(m.get(k), (int, float))}


def _sizes(m: dict, train: str = "train", test: str = "test") -> dict:
    return {"n_train": m.get(train, {}).get("n_images"), "n_test": m.get(test, {}).get("n_images")}


def rows_of(out_dir: Path) -> list[dict]:
    """The table rows of one command's output directory."""
    path = out_dir / "metrics.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read metrics: {exc}") from exc
    source = m.get("feature_settings") or m  # nn-inpaint keeps its encoder under feature_settings
    encoder = Path(source["encoder"]).name if source.get("encoder") else None
    head = {"dir": out_dir.name, "encoder": encoder, "method": source.get("encoder_method")}
    if m.get("task") == "classification":
        task = f"fine-tune {m['layers']} ({m['steps']} steps, {m['config']['test']['crops']} crops)"
        return [{**head, "task": task, **_sizes(m), **_scores(m), "train_s": m.get("train_seconds")}]
    if "probe" in m:
        probe = f"{m['probe']} {m['layer']}"
        if m["probe"] == "knn":
            return [{**head, "task": f"knn k={r['k']} {m['layer']}", **_sizes(m), **_scores(r)}
                    for r in m["results"].values()]
        if "low_shot" in m:
            return [{**head, "task": f"{probe} low-shot {r['shots']}", **_sizes(m),
                     **{k: f"{r[k + '_mean']:.2f} +- {r[k + '_std']:.2f}" for k in MAPS}}
                    for r in m["low_shot"].values()]
        return [{**head, "task": probe, **_sizes(m), **_scores(m)}]
    if m.get("task") == "retrieval":
        index = m.get("index", {}).get("kind", "flat")
        task = f"retrieval {m['layer']} mask={m['mask']} {index}"
        row = {**head, "task": task, **_sizes(m, "database", "queries"), f"P@{m['k']}": m.get("precision_at_k"),
               f"P@{m['k']} chance": m.get("precision_chance")}
        if m.get("recall_at_k_vs_exact") is not None:
            row["recall_vs_exact"] = m["recall_at_k_vs_exact"]
        return [row]
    if m.get("task") == "nn_inpainting":
        task = f"NN inpainting {m['features']} {m['size']} px"
        return [{**head, "method": f"nn-{m['features']}", "task": task, **_sizes(m, "database", "images"),
                 "mean_l1": m["mean_l1"], "mean_l2": m["mean_l2"], "psnr": m["psnr"],
                 "psnr_mean_fill": m["baseline_mean_fill"]["psnr"]}]
    if "baseline_mean_fill" in m and "checkpoint" in m:  # cebench eval-inpainting
        task = f"inpainting {m['mask']} holes ({100 * m.get('hole_coverage', float('nan')):.1f} %)"
        return [{**head, "encoder": Path(m["checkpoint"]).name, "method": m["method"], "task": task,
                 "n_test": m["n_images"], "mean_l1": m["mean_l1"], "mean_l2": m["mean_l2"], "psnr": m["psnr"],
                 "ssim": m.get("ssim"), "l1_mean_fill": m["baseline_mean_fill"]["mean_l1"],
                 "l2_mean_fill": m["baseline_mean_fill"]["mean_l2"], "psnr_mean_fill": m["baseline_mean_fill"]["psnr"],
                 "ssim_mean_fill": m["baseline_mean_fill"].get("ssim")}]
    if m.get("task") == "detection":
        task = f"Fast R-CNN {m['layers']} ({m['steps']} steps)"
        return [{**head, "task": task, **_sizes(m), "map_voc07_11pt": round(m["map_voc07_11pt"], 2),
                 "map_area": round(m["map_area"], 2), "train_s": m.get("train_seconds"),
                 "proposal_s_per_image": _per_image(m, "proposal_seconds_test", "test"),
                 "inference_s_per_image": round(m["inference_seconds_per_image"], 3)}]
    if m.get("task") == "segmentation" and "layers" in m:
        task = f"FCN-32s {m['layers']} ({m['steps']} steps)"
        return [{**head, "task": task, **_sizes(m), "miou": round(m["miou"], 2), "pixel_acc": round(m["pixel_acc"], 2),
                 "mean_acc": round(m["mean_acc"], 2), "train_s": m.get("train_seconds"),
                 "train_s_per_image": m.get("train_seconds_per_image"),
                 "inference_s_per_image": round(m["inference_seconds_per_image"], 3)}]
    raise ValueError(f"{path}: not the metrics of a transfer command (no task or probe key)")


def _per_image(m: dict, key: str, split: str) -> float | None:
    """Seconds per image of a whole-split timing, when the run measured it (None when it came from a cache)."""
    n = m.get(split, {}).get("n_images")
    return round(m[key] / n, 3) if isinstance(m.get(key), (int, float)) and n else None


def summarise(out_dirs: list[Path]) -> pd.DataFrame:
    """All rows, in the order given, with the union of the columns (headline numbers first)."""
    table = pd.DataFrame([row for d in out_dirs for row in rows_of(d)])
    first = [c for c in ("dir", "encoder", "method", "task", "n_train", "n_test", "top1", *MAPS) if c in table]
    return table[first + [c for c in table if c not in first]]


def main(argv: list[str] | None = None) -> int:
    """Print the table; with --out also write it as JSON and Markdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="output directories holding metrics.json")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not (d / "metrics.json").is_file()]
    if missing:
        p.error(f"no metrics.json in: {', '.join(missing)}")
    try:
        table = summarise(args.dirs)
    except (ValueError, KeyError) as exc:
        p.error(str(exc))
    text = table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="") + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(table.to_json(orient="records", indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
