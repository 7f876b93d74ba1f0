"""EXIF date and GPS position of an uploaded image, read with Pillow only.

GPS coordinates are stored in EXIF as three unsigned rationals (degrees, minutes, seconds) plus a
hemisphere reference. They are summed as exact fractions and rounded to a float once, so a value such
as 28° 50' 6.539154" N reads back as exactly ``28.835149765``. The hemisphere is applied to the signed
``latitude`` / ``longitude`` (south and west are negative); the legacy-compatible ``gps`` dict keeps the
unsigned values next to their reference letters, as the legacy API's ``/imginfo`` did.

Reading never fails: an image without EXIF, without GPS, or with broken EXIF gives ``None`` fields.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from PIL import ExifTags, Image

from engine.images import DEFAULT_MAX_PIXELS

# Tried in this order: the moment the photo was taken, then when it was digitised, then file change time.
_DATE_TAGS = (ExifTags.Base.DateTimeOriginal, ExifTags.Base.DateTimeDigitized, ExifTags.Base.DateTime)
# Cameras write dashes or a "T" now and then; some pad with NULs or write all zeros for "unknown".
_DATE = re.compile(r"(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_UNKNOWN_DATE = "0000:00:00 00:00:00"
# EXIF 3.0 adds refs 2/3 (above/below the reference ellipsoid); the odd ones mean "below".
_BELOW_SEA_LEVEL_REFS = {1, 3}


@dataclass(frozen=True)
class ExifInfo:
    """What the annotation platform keeps from an image's EXIF.

    Attributes:
        date: ``"YYYY:MM:DD HH:MM:SS"`` from DateTimeOriginal, else DateTimeDigitized, else DateTime.
        gps: the legacy API's ``GPS_information`` dict (keys GPSAltitude, GPSAltitudeRef, GPSLatitude,
            GPSLatitudeRef, GPSLongitude, GPSLongitudeRef; unsigned degrees as floats, altitude and its
            ref as strings, a missing one as None), or None when the image carries no usable GPS.
        latitude: signed decimal degrees (south negative), or None.
        longitude: signed decimal degrees (west negative), or None.
        altitude: signed metres (below sea level negative), or None.
    """

    date: str | None = None
    gps: dict[str, Any] | None = field(default=None, hash=False)
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None

    def to_imginfo(self) -> dict[str, Any]:
        """Return the EXIF part of the legacy API's ``/imginfo`` answer plus signed coordinates for maps."""
        return {
            "data_information": self.date,
            "GPS_information": dict(self.gps) if self.gps is not None else None,
            "latitude": self.latitude,
            "longitude": self.longitude,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return every field as plain JSON-ready values (for catalog rows)."""
        return {
            "date": self.date,
            "gps": dict(self.gps) if self.gps is not None else None,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "altitude": self.altitude,
        }


def read_exif(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ExifInfo:
    """Read the EXIF date and GPS position from encoded image bytes (JPEG, PNG, WebP, TIFF, ...).

    Args:
        data: the file's bytes as uploaded (before any EXIF transpose).
        max_pixels: images larger than this are not inspected, because reading EXIF from a PNG whose
            eXIf chunk follows the pixels means decoding them.

    Returns:
        The :class:`ExifInfo`; every field is None when the bytes are not an image, carry no EXIF, or
        carry EXIF that cannot be parsed.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns on corrupt EXIF; corrupt EXIF simply reads as absent here.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    return ExifInfo()
                return read_exif_from_image(img)
    except Exception:  # noqa: BLE001 - not an image at all: the caller's decoder reports that, not this reader
        return ExifInfo()


def read_exif_from_image(img: Image.Image) -> ExifInfo:
    """Read the EXIF date and GPS position from an opened Pillow image.

    Args:
        img: the image as opened; :func:`PIL.ImageOps.exif_transpose` keeps date and GPS, so either the
            original or the transposed image will do.

    Returns:
        The :class:`ExifInfo`, with None fields for anything missing or unreadable.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = img.getexif()
            date = _read_date(exif)
            return _build_info(date, _safe_ifd(exif, ExifTags.IFD.GPSInfo))
    except Exception:  # noqa: BLE001 - broken EXIF must never stop an upload
        return ExifInfo()


def exif_summary(info: ExifInfo) -> str:
    """Return a one-line human description, e.g. ``2019:08:03 14:41:10 · 28.835150, 106.935432 · -3 m``.

    Args:
        info: what :func:`read_exif` returned.

    Returns:
        The date, the signed position and the altitude that are known, or ``"no EXIF date or GPS"``.
    """
    parts = []
    if info.date is not None:
        parts.append(info.date)
    if info.latitude is not None and info.longitude is not None:
        parts.append(f"{info.latitude:.6f}, {info.longitude:.6f}")
    if info.altitude is not None:
        parts.append(f"{info.altitude:g} m")
    return " · ".join(parts) if parts else "no EXIF date or GPS"


def _safe_ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    """Return a sub-IFD as a dict, or an empty one when its pointer is missing or broken."""
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # noqa: BLE001 - a pointer past the end of the data, a loop, ...
        return {}


def _read_date(exif: Image.Exif) -> str | None:
    """Return the first usable date of :data:`_DATE_TAGS`, looking in the Exif IFD and then IFD0."""
    # Some writers put DateTimeOriginal in IFD0 instead of the Exif sub-IFD: accept both.
    exif_ifd = _safe_ifd(exif, ExifTags.IFD.Exif)
    for tag in _DATE_TAGS:
        for ifd in (exif_ifd, exif):
            date = _parse_date(ifd.get(tag))
            if date is not None:
                return date
    return None


def _parse_date(value: Any) -> str | None:
    """Normalise an EXIF date to ``YYYY:MM:DD HH:MM:SS``; None for blanks, zeros and non-dates."""
    text = _as_text(value)
    match = _DATE.match(text) if text is not None else None
    if match is None:
        return None
    date = "{}:{}:{} {}:{}:{}".format(*match.groups())
    return None if date == _UNKNOWN_DATE else date


def _as_text(value: Any) -> str | None:
    """Return an ASCII tag value as a stripped string (bytes decoded, NUL padding removed)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text or None


def _build_info(date: str | None, gps_ifd: dict[int, Any]) -> ExifInfo:
    """Combine the date and the decoded GPS IFD into an :class:`ExifInfo`."""
    lat_ref = _hemisphere(gps_ifd.get(ExifTags.GPS.GPSLatitudeRef), "NS")
    lon_ref = _hemisphere(gps_ifd.get(ExifTags.GPS.GPSLongitudeRef), "EW")
    lat = _dms_to_degrees(gps_ifd.get(ExifTags.GPS.GPSLatitude), limit=90)
    lon = _dms_to_degrees(gps_ifd.get(ExifTags.GPS.GPSLongitude), limit=180)
    alt = _to_fraction(gps_ifd.get(ExifTags.GPS.GPSAltitude))
    alt_ref = _altitude_ref(gps_ifd.get(ExifTags.GPS.GPSAltitudeRef))
    if alt is not None and alt < 0:
        alt = None  # GPSAltitude is an unsigned RATIONAL: the sign lives in the ref
    if lat is None and lon is None and alt is None:
        return ExifInfo(date=date)
    gps = {
        "GPSAltitude": _number_text(alt) if alt is not None else None,
        "GPSAltitudeRef": str(alt_ref) if alt_ref is not None else None,
        "GPSLatitude": float(lat) if lat is not None else None,
        "GPSLatitudeRef": lat_ref,
        "GPSLongitude": float(lon) if lon is not None else None,
        "GPSLongitudeRef": lon_ref,
    }
    return ExifInfo(
        date=date,
        gps=gps,
        latitude=_signed(lat, negative=lat_ref == "S"),
        longitude=_signed(lon, negative=lon_ref == "W"),
        altitude=_signed(alt, negative=alt_ref in _BELOW_SEA_LEVEL_REFS),
    )


def _to_fraction(value: Any) -> Fraction | None:
    """Return an EXIF number as an exact Fraction; None for NaN, x/0, text and other oddities."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    numerator = getattr(value, "numerator", None)
    denominator = getattr(value, "denominator", None)
    if isinstance(numerator, int) and isinstance(denominator, int):
        # IFDRational keeps the stored pair; its float value would already be rounded.
        return Fraction(numerator, denominator) if denominator != 0 else None
    if isinstance(value, float) and math.isfinite(value):
        return Fraction(value)
    return None


def _dms_to_degrees(value: Any, limit: int) -> Fraction | None:
    """Sum degrees, minutes and seconds (any may be fractional) into exact unsigned degrees.

    Writers that store one value (decimal degrees) or two (degrees, decimal minutes) are accepted.
    Negative parts or a total beyond ``limit`` mean the tag is broken, so None.
    """
    parts = value if isinstance(value, tuple) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    fractions = [_to_fraction(part) for part in parts]
    if any(part is None or part < 0 for part in fractions):
        return None
    degrees = sum(part / 60**i for i, part in enumerate(fractions))
    return degrees if degrees <= limit else None


def _hemisphere(value: Any, allowed: str) -> str | None:
    """Return ``N``/``S`` or ``E``/``W`` (upper case), or None when the ref is missing or invalid."""
    text = _as_text(value)
    if text is None or len(text) != 1 or text.upper() not in allowed:
        return None
    return text.upper()


def _altitude_ref(value: Any) -> int | None:
    """Return GPSAltitudeRef as an int (it is a BYTE: Pillow gives ``b"\\x01"``, some writers ``1``)."""
    if isinstance(value, bytes) and len(value) == 1:
        return value[0]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    if isinstance(value, tuple) and len(value) == 1:
        return _altitude_ref(value[0])
    return None


def _number_text(value: Fraction) -> str:
    """Format an unsigned rational as the legacy API did: ``"0"`` for whole numbers, else the float."""
    return str(value.numerator) if value.denominator == 1 else repr(float(value))


def _signed(value: Fraction | None, negative: bool) -> float | None:
    """Round an exact unsigned value to a float once, applying the hemisphere or altitude sign."""
    if value is None:
        return None
    # ``+ 0.0`` turns -0.0 (zero metres "below" sea level) into 0.0.
    return (-float(value) if negative else float(value)) + 0.0
