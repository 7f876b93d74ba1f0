"""A zip of images with one COCO JSON file at its top: each image's labels are the categories its
annotations name (boxes and masks are not used)."""

from __future__ import annotations

from engine import archives
from engine.formats import register_format
from engine.formats.labelled import LabelledZip


@register_format
class CocoLabels(LabelledZip):
    name = "coco"
    description = "a zip of images with a COCO JSON file (images, categories, annotations) at its top"
    label_suffix = ".json"
    parse = staticmethod(archives.parse_coco)
