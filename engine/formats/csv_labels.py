"""A zip of images with one CSV file of their labels at its top: ``Id`` then one 0/1 column per label (this
project's annotation export), or an id column and a ``labels`` column of names (spreadsheets, scripts)."""

from __future__ import annotations

from engine import archives
from engine.formats import register_format
from engine.formats.labelled import LabelledZip


@register_format
class CsvLabels(LabelledZip):
    name = "csv"
    description = "a zip of images with a CSV file of their labels at its top"
    label_suffix = ".csv"
    parse = staticmethod(archives.parse_csv)
