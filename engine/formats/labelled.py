"""What the formats of labelled images share: a zip of images with one label file at its top, told apart by
that file's ending and read by its parser (the rows are matched to the zip's images by path, name or stem)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine import archives
from engine.archives import AnnotatedZip, ZipLimits
from engine.formats import ZIP, DatasetFormat, Probe


class LabelledZip(DatasetFormat):
    """A zip of images and one label file; a subclass sets ``label_suffix`` and ``parse``.

    Attributes:
        parse: ``(text, field) -> [(image key, labels)]``, the label file's reader.
    """

    container = ZIP
    suffixes = (".zip",)
    makes = "annotations"
    parse: Callable[[str, str], list[tuple[str, list[str]]]]

    def recognises(self, probe: Probe) -> bool:
        return (probe.label_file or "").lower().endswith(str(self.label_suffix))

    def read_labelled(self, source: Path, limits: ZipLimits) -> AnnotatedZip:
        return archives.read_annotated_zip(source, self.parse, (str(self.label_suffix),), limits)
