"""argparse types shared by the transfer commands (positive integers, number lists, `--max-images N[,M]`) and their
shared fine-tuning command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def number_list(text: str, kind: type = int) -> tuple:
    """Comma-separated positive numbers of `kind`, e.g. '20,200' or '0.1,1'."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    values = number_list(text, int)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer, got {text!r}")
    return values[0]


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def add_extraction_arguments(p: argparse.ArgumentParser) -> None:
    """--precision and --workers of the feature extraction (probes, retrieval); metrics.json records what `auto`
    resolved to."""
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
    import logging

    import yaml

    from pretext.cli import setup_logging
    from pretext.engine.distributed import peer_failure
    from pretext.engine.trainer import NonFiniteLossError
    from pretext.pretrain import _last_line

    log = logging.getLogger("cebench")
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
