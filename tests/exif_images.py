"""Images whose EXIF the tests write themselves (Pillow only), so read values can be checked exactly."""

from __future__ import annotations

from fractions import Fraction

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

GPS = ExifTags.GPS
LEGACY_GPS = {  # the legacy API's /imginfo example, as a reader must answer it
    "GPSAltitude": "0",
    "GPSAltitudeRef": "1",
    "GPSLatitude": 28.835149765,
    "GPSLatitudeRef": "N",
    "GPSLongitude": 106.93543243388889,
    "GPSLongitudeRef": "E",
}


def rational(value: str | int) -> IFDRational:
    """An EXIF RATIONAL holding exactly ``value`` (a decimal string such as "6.539154", or an int)."""
    exact = Fraction(value)
    return IFDRational(exact.numerator, exact.denominator)


def dms(degrees: str | int, minutes: str | int, seconds: str | int) -> tuple[IFDRational, ...]:
    return rational(degrees), rational(minutes), rational(seconds)


def legacy_gps() -> dict[int, object]:
    """28° 50' 6.539154" N, 106° 56' 7.556762" E, 0 m with ref 1: the legacy API's /imginfo example."""
    return {
        GPS.GPSLatitudeRef: "N",
        GPS.GPSLatitude: dms(28, 50, "6.539154"),
        GPS.GPSLongitudeRef: "E",
        GPS.GPSLongitude: dms(106, 56, "7.556762"),
        GPS.GPSAltitudeRef: 1,
        GPS.GPSAltitude: rational(0),
    }


def make_exif(gps: dict[int, object] | None = None, **dates: str) -> Image.Exif:
    """Build EXIF: ``DateTime`` in IFD0, ``DateTimeOriginal``/``DateTimeDigitized`` in the Exif IFD."""
    exif = Image.Exif()
    if "DateTime" in dates:
        exif[ExifTags.Base.DateTime] = dates["DateTime"]
    for name in ("DateTimeOriginal", "DateTimeDigitized"):
        if name in dates:
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base[name]] = dates[name]
    if gps:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
    return exif
