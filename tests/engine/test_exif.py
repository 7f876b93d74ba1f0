"""EXIF date and GPS: each test writes its own EXIF with Pillow and checks the values read back exactly."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image, features
from PIL.TiffImagePlugin import IFDRational

from engine.exif import ExifInfo, exif_summary, read_exif, read_exif_from_image
from engine.images import open_image
from tests.exif_images import GPS, LEGACY_GPS, dms, legacy_gps, make_exif, rational


def encode(exif: Image.Exif | bytes | None, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    extra = {} if exif is None else {"exif": exif.tobytes() if isinstance(exif, Image.Exif) else exif}
    Image.new("RGB", (8, 6), (200, 40, 40)).save(buf, fmt, **extra)
    return buf.getvalue()


def gps_info(gps: dict[int, object]) -> ExifInfo:
    return read_exif(encode(make_exif(gps)))


def test_legacy_example_reads_back_exactly():
    info = read_exif(encode(make_exif(legacy_gps(), DateTimeOriginal="2019:08:03 14:41:10")))
    assert info.gps == LEGACY_GPS
    assert (info.latitude, info.longitude, info.altitude) == (28.835149765, 106.93543243388889, 0.0)
    assert info.to_imginfo() == {
        "data_information": "2019:08:03 14:41:10",
        "GPS_information": LEGACY_GPS,
        "latitude": 28.835149765,
        "longitude": 106.93543243388889,
    }


FORMATS = ["JPEG", "PNG", "TIFF", pytest.param("WEBP", marks=pytest.mark.skipif(
    not features.check("webp"), reason="Pillow built without WebP"))]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_with_exif_reads_the_same(fmt):
    info = read_exif(encode(make_exif(legacy_gps(), DateTime="2020:01:02 03:04:05"), fmt))
    assert info.gps == LEGACY_GPS
    assert info.date == "2020:01:02 03:04:05"


def test_south_and_west_are_negative():
    info = gps_info(
        {
            GPS.GPSLatitudeRef: "S",
            GPS.GPSLatitude: dms(33, 51, 36),  # 33.86
            GPS.GPSLongitudeRef: "W",
            GPS.GPSLongitude: dms(151, 12, 36),  # 151.21
        }
    )
    assert (info.latitude, info.longitude) == (-33.86, -151.21)
    assert info.gps == {
        "GPSAltitude": None,
        "GPSAltitudeRef": None,
        "GPSLatitude": 33.86,
        "GPSLatitudeRef": "S",
        "GPSLongitude": 151.21,
        "GPSLongitudeRef": "W",
    }
    assert info.altitude is None


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((40, 26, "46.302"), 40.446195),  # fractional seconds
        ((48, "7.5", 0), 48.125),  # fractional minutes, zero seconds
        ((10, 30, 0), 10.5),  # whole minutes, zero seconds
        ((0, 0, "0.36"), 0.0001),  # only seconds
        (("12.25", 0, 0), 12.25),  # decimal degrees in the degrees field
    ],
)
def test_dms_rationals_convert_exactly(parts, expected):
    info = gps_info({GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: dms(*parts)})
    assert info.latitude == expected
    assert info.gps["GPSLatitude"] == expected
    assert info.longitude is None


def test_altitude_below_sea_level_is_negative():
    info = gps_info({GPS.GPSAltitudeRef: 1, GPS.GPSAltitude: rational("12.5")})
    assert info.altitude == -12.5
    assert (info.gps["GPSAltitude"], info.gps["GPSAltitudeRef"]) == ("12.5", "1")
    assert info.latitude is None


def test_altitude_above_sea_level_is_positive():
    info = gps_info({GPS.GPSAltitudeRef: 0, GPS.GPSAltitude: rational(1234)})
    assert info.altitude == 1234.0
    assert (info.gps["GPSAltitude"], info.gps["GPSAltitudeRef"]) == ("1234", "0")


def test_missing_hemisphere_reads_as_unsigned():
    info = gps_info({GPS.GPSLatitude: dms(10, 30, 0)})
    assert info.latitude == 10.5
    assert info.gps["GPSLatitudeRef"] is None


def test_broken_gps_values_read_as_none():
    info = gps_info(
        {
            GPS.GPSLatitudeRef: "N",
            GPS.GPSLatitude: (IFDRational(1, 0), rational(5), rational(0)),  # x/0
            GPS.GPSLongitudeRef: "E",
            GPS.GPSLongitude: dms(181, 0, 0),  # beyond 180
        }
    )
    assert info == ExifInfo()


TAKEN, DIGITIZED, CHANGED = "2019:08:03 14:41:10", "2019:08:04 09:10:11", "2020:01:01 12:13:14"


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        ({"DateTimeOriginal": TAKEN, "DateTimeDigitized": DIGITIZED, "DateTime": CHANGED}, TAKEN),
        ({"DateTimeDigitized": DIGITIZED, "DateTime": CHANGED}, DIGITIZED),
        ({"DateTime": CHANGED}, CHANGED),
        ({"DateTimeOriginal": "0000:00:00 00:00:00", "DateTime": CHANGED}, CHANGED),  # zeros = unknown
        ({"DateTimeOriginal": "2019-08-03T14:41:10"}, TAKEN),  # dashes and "T" normalised
        ({"DateTimeOriginal": "    "}, None),
        ({}, None),
    ],
)
def test_date_prefers_original_then_digitized_then_datetime(dates, expected):
    info = read_exif(encode(make_exif(**dates)))
    assert info.date == expected
    assert info.gps is None


def test_no_exif_gives_nones():
    info = read_exif(encode(None, "PNG"))
    assert info == ExifInfo()
    assert info.to_imginfo() == {
        "data_information": None,
        "GPS_information": None,
        "latitude": None,
        "longitude": None,
    }
    assert exif_summary(info) == "no EXIF date or GPS"


@pytest.mark.parametrize(
    "payload",
    [
        b"Exif\x00\x00garbage!!!",
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff",
        # IFD0 with a GPSInfo pointer far past the end of the data
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x25\x88\x04\x00\x01\x00\x00\x00\xff\xff\xff\x0f",
    ],
)
def test_garbage_exif_gives_nones(payload):
    assert read_exif(encode(payload)) == ExifInfo()


def test_not_an_image_gives_nones():
    assert read_exif(b"definitely not an image") == ExifInfo()
    assert read_exif(b"") == ExifInfo()


def test_transposed_image_keeps_gps_and_date():
    exif = make_exif(legacy_gps(), DateTimeOriginal="2019:08:03 14:41:10")
    exif[ExifTags.Base.Orientation] = 6  # rotated: open_image() transposes it
    img = open_image(encode(exif))
    assert img.size == (6, 8)
    info = read_exif_from_image(img)
    assert (info.date, info.gps) == ("2019:08:03 14:41:10", LEGACY_GPS)


def test_summary_and_dict():
    info = gps_info(
        {GPS.GPSLatitudeRef: "S", GPS.GPSLatitude: dms(10, 30, 0), GPS.GPSLongitudeRef: "E",
         GPS.GPSLongitude: dms(20, 15, 0), GPS.GPSAltitudeRef: 1, GPS.GPSAltitude: rational(3)}
    )  # fmt: skip
    assert exif_summary(info) == "-10.500000, 20.250000 · -3 m"
    assert info.to_dict()["altitude"] == -3.0
    assert info.to_dict()["gps"]["GPSLongitude"] == 20.25
