"""argparse types of the command lines of both packages: numbers, positive integers, comma-separated number lists.
Each turns bad text into an argparse error that names it."""

from __future__ import annotations

import argparse
import math


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
