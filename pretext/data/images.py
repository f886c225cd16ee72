"""Reading one image file as 8-bit RGB, with clear errors for anything unreadable."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default decompression-bomb limit


class BadImageError(ValueError):
    """An image file cannot be used; the message names the file and the reason."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette (with transparency), RGBA, CMYK and 16-bit/float images -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Decode `path` fully as RGB; `min_side` lets JPEG decode at a reduced scale that still covers it."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(img, max_pixels, path)
                if min_side and img.format == "JPEG":
                    img.draft("RGB", _draft_size(img.size, min_side))
                img.load()
                return to_rgb(img)
    except BadImageError:
        raise
    except FileNotFoundError as exc:
        raise BadImageError(f"{path}: file not found") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"{path}: too many pixels (limit {max_pixels}): {exc}") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        raise BadImageError(f"{path}: cannot read image: {type(exc).__name__}: {exc}") from exc


def _check_pixels(img: Image.Image, max_pixels: int, path: Path) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImageError(f"{path}: empty image ({w}x{h})")
    if w * h > max_pixels:
        raise BadImageError(f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)")


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    w, h = size
    scale = min_side / min(w, h)
    return max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))


# Truncated files must fail loudly, not decode as grey bottoms.
ImageFile.LOAD_TRUNCATED_IMAGES = False
