"""The command lines of both packages: argparse types (numbers, positive integers, comma-separated number lists;
each turns bad text into an argparse error that names it) and `command_main`, the parse / run / report of a
one-shot command."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cebench")


def parse_number(text: str, kind: type = int) -> int | float:
    """`text` as a `kind` (int or float)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None


def number_list(text: str, kind: type = int) -> tuple:
    """Comma-separated positive finite numbers of `kind`, e.g. '20,200' or '0.1,1'."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive and finite, got {text!r}")
    return values


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = parse_number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = parse_number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def command_main(parser: argparse.ArgumentParser, argv: list[str] | None,
                 run: Callable[[argparse.Namespace], Any], report: Callable[[Any, argparse.Namespace], str],
                 errors: tuple[type[Exception], ...] = (ValueError, OSError, RuntimeError),
                 check: Callable[[argparse.Namespace], str | None] | None = None) -> int:
    """The command line of a one-shot command: parse `argv`, `check(args)` (a message is a usage error), then
    `run(args)`; one of `errors` (bad directories, images, encoders, devices) is one logged line and exit code 2;
    else prints `report(record, args)` and returns 0."""
    from .cli import setup_logging

    setup_logging()
    args = parser.parse_args(argv)
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    try:
        record = run(args)
    except errors as exc:
        log.error("%s", exc)
        return 2
    print(report(record, args))
    return 0
