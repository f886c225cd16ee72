"""argparse types of the transfer commands (`--max-images N[,M]`, the extraction options) and the command line of
`cebench transfer classify|detect|segment` (`fine_tune_main`). The number types and `command_main`, the command
line of the one-shot commands (probes, retrieval, nearest-neighbour inpainting, evaluation, VOC layout), come from
`pretext.arguments`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pretext.arguments import command_main, non_negative_int, number_list, parse_number, positive_int

__all__ = ["PRECISIONS", "add_extraction_arguments", "command_main", "fine_tune_main", "max_images",
           "non_negative_int", "number_list", "parse_number", "positive_int"]

log = logging.getLogger("cebench")

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def add_extraction_arguments(p: argparse.ArgumentParser) -> None:
    """--cache, --batch-size, --device, --precision and --workers of the feature extraction (probes, retrieval);
    metrics.json records what `--precision auto` resolved to (`feature_precision`)."""
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="feature cache (default $CEBENCH_CACHE/features or ~/.cache/cebench/features)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="feature extraction precision: auto = bf16 where the hardware has it natively (AVX512-BF16 / "
                        "AMX CPUs, bf16 GPUs), fp32 elsewhere (default: fp32)")
    p.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="image decoding processes while the encoder runs (default: one per core but one, at most "
                        "4; 0 = in this process)")


def max_images(text: str) -> tuple[int, int]:
    """N (both sets) or N,M (first set, second set)."""
    values = number_list(text, int)
    if len(values) > 2:
        raise argparse.ArgumentTypeError(f"expected N or N,M, got {text!r}")
    return values[0], values[-1]


def fine_tune_main(parser: argparse.ArgumentParser, argv: list[str] | None, preset_names: Callable[[], list[str]],
                   load_config: Callable[[str, list[str]], Any], run: Callable[[Any, argparse.Namespace], dict | None],
                   summary: Callable[[dict], str]) -> int:
    """The command line shared by `cebench transfer classify|detect|segment`: --list-presets, --print-config, then
    `run(cfg, args)` with known failures as one line and an exit code (2 bad input, 3 non-finite loss, 4 another
    DDP process failed); prints `summary(record)` on rank 0."""
    import yaml

    from pretext.cli import setup_logging
    from pretext.engine.distributed import peer_failure
    from pretext.engine.trainer import NonFiniteLossError
    from pretext.pretrain import _last_line

    setup_logging()
    args = parser.parse_intermixed_args(argv)
    if args.list_presets:
        print("\n".join(preset_names()))
        return 0
    try:
        cfg = load_config(args.preset, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        if None in (args.encoder, args.data, args.out):
            parser.error("--encoder, --data and --out are required")
        record = run(cfg, args)
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return 3
    except RuntimeError as exc:  # checkpoints and devices, or a collective that failed because a peer did
        message = peer_failure(exc)
        log.error("%s", message or _last_line(exc))
        return 4 if message else 2
    except (ValueError, OSError) as exc:  # configs, data roots, annotations, images, encoders
        log.error("%s", _last_line(exc))
        return 2
    if record is not None:
        print(f"{summary(record)}\n-> {args.out / 'metrics.json'}")
    return 0
