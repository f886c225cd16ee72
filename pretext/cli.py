"""`cebench`: one console command whose subcommands live in their own modules (also runnable with `python -m`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__

# name -> (module with main(argv, prog), one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-demo-data": ("pretext.data.demo", "generate the built-in VOC-format demo dataset"),
    "pretrain": ("pretext.pretrain", "train a pretext method (context encoder, baselines, inpainting) from a preset or YAML"),
    "inpaint": ("pretext.inpaint", "fill holes in your images with a trained model; PNGs and a comparison grid"),
    "eval-inpainting": ("pretext.eval_inpainting", "mean L1 / L2 / PSNR on the hole (Table 1 of the paper)"),
    "evaluate": ("transfer.evaluate",
                 "score results files: VOC classification mAP, VOC07 detection AP, segmentation mIoU"),
    "transfer": ("transfer.cli",
                 "fine-tune an encoder on a labelled task: `cebench transfer classify|detect|segment ...`"),
    "probe": ("transfer.probe", "linear / SVM probe or weighted kNN on frozen encoder features"),
    "retrieve": ("transfer.retrieve", "FAISS nearest-neighbour retrieval of encoder features; PNG grid, precision@k"),
    "nn-inpaint": ("transfer.nn_inpaint", "nearest-neighbour inpainting (HOG or encoder features), Table 1 rows"),
    "data": ("transfer.data_check", "`cebench data check ROOT`: validate a dataset; `data fetch NAME DIR`: download one; `data objects`: crops"),
    "voc-tree": ("transfer.voc_layout", "a VOC-format root linking labelImg-style images, XMLs and split lists"),
    "import-alexnet": ("pretext.import_alexnet", "a torchvision AlexNet state dict from disk as an encoder"),
    "run": ("benchmarks.suite", "run a benchmark suite: pretrain every method, evaluate every task, write the tables"),
    "table": ("benchmarks.tables", "rebuild a suite's tables and figures from its stored cells"),
    "bench": ("benchmarks.perf", "speed benchmark: steps, pipeline, search, detection; writes OUT/perf.{json,md}"),
}


def safe_streams() -> None:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) are printed as escapes, not a crash of a
    strict stdout/stderr (e.g. under LANG=en_US.UTF-8 or PYTHONIOENCODING=utf-8)."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def setup_logging(verbose: bool = False) -> None:
    """INFO logs on rank 0, warnings elsewhere."""
    safe_streams()
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser listing the subcommands."""
    lines = "\n".join(f"  {name:<18}{text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="cebench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Context Encoders feature-learning benchmark suite.",
        epilog=f"commands:\n{lines}\n\n`cebench COMMAND --help` shows a command's options.")
    parser.add_argument("--version", action="version", version=f"cebench {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand's own `main`."""
    safe_streams()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args.args, prog=f"cebench {args.command}") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
