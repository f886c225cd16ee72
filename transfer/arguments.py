"""argparse types shared by the transfer commands: positive integers, number lists, `--max-images N[,M]`."""

from __future__ import annotations

import argparse


def number_list(text: str, kind: type = int) -> tuple:
    """Comma-separated positive numbers of `kind`, e.g. '20,200' or '0.1,1'."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """An integer >= 1."""
    values = number_list(text, int)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer, got {text!r}")
    return values[0]


def max_images(text: str) -> tuple[int, int]:
    """N (both sets) or N,M (first set, second set)."""
    values = number_list(text, int)
    if len(values) > 2:
        raise argparse.ArgumentTypeError(f"expected N or N,M, got {text!r}")
    return values[0], values[-1]
