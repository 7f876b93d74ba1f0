"""Decoding images that come from users: any format Pillow reads, EXIF orientation applied, size-limited."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from engine.exceptions import ImageTooLarge, InvalidInput

DEFAULT_MAX_PIXELS = 50_000_000
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)


def decode_base64(data: str, field: str = "image") -> bytes:
    """Return the bytes of a base64 string, with or without a ``data:<type>;base64,`` prefix."""
    if not isinstance(data, str) or not data.strip():
        raise InvalidInput(f"'{field}' must be a non-empty base64 string", field)
    payload = _DATA_URL.sub("", data.strip(), count=1)
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"'{field}' is not valid base64: {exc}", field) from exc


def open_image(data: bytes, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes with Pillow, refusing non-images, truncated files and decompression bombs.

    The EXIF orientation is applied, so the pixels are the way the photo is meant to be seen.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(
                    f"'{field}' has {img.width}x{img.height} pixels; the limit is {max_pixels} pixels", field
                )
            img.load()
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"'{field}' is too large to decode safely: {exc}", field) from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise InvalidInput(f"'{field}' is not a readable image ({type(exc).__name__}: {exc})", field) from exc
    return ImageOps.exif_transpose(img)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Return an H×W×3 uint8 RGB array (alpha composited onto white, palettes and greys expanded)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def decode_image(data: bytes | str, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode raw bytes or a base64 string into an RGB uint8 array (see :func:`open_image`)."""
    raw = decode_base64(data, field) if isinstance(data, str) else data
    return to_rgb_array(open_image(raw, field, max_pixels))


def encode_png(array: np.ndarray) -> bytes:
    """Encode an RGB or RGBA uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
