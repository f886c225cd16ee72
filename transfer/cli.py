"""`cebench transfer TASK`: fine-tune an exported encoder on a labelled task; each task is its own module."""

from __future__ import annotations

import argparse
import importlib

# task -> (module with main(argv, prog), one-line help).
TASKS: dict[str, tuple[str, str]] = {
    "classify": ("transfer.classify", "image classification fine-tuning (VOC / COCO mAP, ImageFolder top-1)"),
    "detect": ("transfer.detect", "Fast R-CNN detection fine-tuning (VOC07 AP@0.5)"),
    "segment": ("transfer.segment", "FCN-32s semantic segmentation fine-tuning (mIoU)"),
}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Top-level parser listing the tasks."""
    lines = "\n".join(f"  {name:<12}{text}" for name, (_, text) in TASKS.items())
    parser = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Fine-tune an exported encoder on a transfer task.",
                                     epilog=f"tasks:\n{lines}\n\n`{prog or 'cebench transfer'} TASK --help` shows "
                                            f"a task's options.")
    parser.add_argument("task", choices=list(TASKS), metavar="TASK")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Dispatch to the task's own `main`."""
    args = build_parser(prog).parse_args(argv)
    module = importlib.import_module(TASKS[args.task][0])
    return int(module.main(args.args, prog=f"{prog or 'cebench transfer'} {args.task}") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
