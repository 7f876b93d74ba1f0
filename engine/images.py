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
# The largest side, in pixels, of any image the studio makes or trains on (inputs, samples, crops).
MAX_IMAGE_SIDE = 4096
# What one decoded image may cost: width x height x channels x bytes per sample. 256 MiB lets through a
# 50 MP 8-bit RGBA photo and refuses a 7000x7000 16-bit RGBA PNG (392 MB), which compresses to 381 KB.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
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


def decoded_bytes(img: Image.Image) -> int:
    """What decoding ``img`` costs at its file's bit depth: pixels x channels x bytes per sample.

    Read from the header alone (mode and the decoder's raw mode), before any pixel is decoded.
    """
    raw_modes = [t.args if isinstance(t.args, str) else (t.args or ("",))[0] for t in img.tile]
    if img.mode in ("I", "F") or any("32" in str(r) for r in raw_modes):
        per_sample = 4
    elif img.mode.startswith("I;16") or any("16" in str(r) for r in raw_modes):
        per_sample = 2
    else:
        per_sample = 1
    in_file = len(img.getbands()) * per_sample
    in_pillow = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4  # RGB is 4 bytes
    return img.width * img.height * max(in_file, in_pillow)


def open_image(data: bytes, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES, max_side: int | None = None) -> Image.Image:
    """Open image bytes with Pillow, refusing non-images, truncated files and decompression bombs.

    The EXIF orientation is applied, so the pixels are the way the photo is meant to be seen.

    Args:
        data: the file's bytes.
        field: the request field to name in errors.
        max_pixels: the most pixels the image may have.
        max_bytes: the most memory one decoded copy may take (bit depth x channels x pixels).
        max_side: when given, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay at
            least this long (the caller needs no more), before the pixel and memory limits are checked.

    Raises:
        ImageTooLarge: over ``max_pixels`` or ``max_bytes``, checked from the header before decoding.
        InvalidInput: not an image Pillow can read, or a truncated one.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_side and img.format == "JPEG":
                img.draft(img.mode, (max_side, max_side))
            _check_size(img, field, max_pixels, max_bytes)
            img.load()
            img = _reduced(img, max_side)
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"'{field}' is too large to decode safely: {exc}", field) from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        detail = _OBJECT_REPR.sub("the data", str(exc))  # an object's address tells the user nothing
        raise InvalidInput(f"'{field}' is not a readable image ({type(exc).__name__}: {detail})", field) from exc
    ImageOps.exif_transpose(img, in_place=True)  # the default returns a copy even when nothing turns
    return img


def _reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """``img`` shrunk by a whole factor while both sides stay at least ``max_side`` (later copies cost less)."""
    factor = min(img.size) // max_side if max_side else 1
    if factor < 2:
        return img
    reduced = img.reduce(factor)
    reduced.info, reduced.format = img.info, img.format  # EXIF orientation still to be applied
    if hasattr(img, "getexif"):
        reduced.getexif().update(img.getexif())
    return reduced


def _check_size(img: Image.Image, field: str, max_pixels: int, max_bytes: int) -> None:
    if img.width * img.height > max_pixels:
        raise ImageTooLarge(f"'{field}' has {img.width}x{img.height} pixels; the limit is {max_pixels} pixels", field)
    cost = decoded_bytes(img)
    if cost > max_bytes:
        raise ImageTooLarge(f"'{field}' would take {cost / 2**20:.0f} MiB to decode ({img.width}x{img.height}, "
                            f"{len(img.getbands())} channels, mode {img.mode}); the limit is "
                            f"{max_bytes / 2**20:.0f} MiB: send it smaller or at 8 bits per channel", field)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Return an H×W×3 uint8 RGB array (alpha composited onto white, palettes and greys expanded)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    rgb = img if img.mode == "RGB" else img.convert("RGB")  # convert() copies even when nothing changes
    return np.array(rgb, dtype=np.uint8)


def decode_image(data: bytes | str, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_side: int | None = None) -> np.ndarray:
    """Decode raw bytes or a base64 string into an RGB uint8 array (see :func:`open_image`)."""
    raw = decode_base64(data, field) if isinstance(data, str) else data
    return to_rgb_array(open_image(raw, field, max_pixels, max_bytes, max_side))


def encode_png(array: np.ndarray) -> bytes:
    """Encode an RGB or RGBA uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
