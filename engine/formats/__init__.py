"""The dataset formats users bring and take away: one registry (like ``engine.models``) that every door reads.

A format is a class in a module of this package, registered by :func:`register_format`. It declares:

* **who it is**: ``name``, a line for people (``description``) and the file endings an uploader offers
  (``suffixes``; the first is the ending of its downloads);
* **how it is recognised**, in two steps. Its :class:`Container` (a zip, an HDF5 file) is told from the file's
  first bytes, and a zip's end record is checked: all a request reads, the same whatever the file holds
  (:func:`sniff`). The import job then asks each format of that container :meth:`DatasetFormat.recognises`
  with a :class:`Probe`, which may read what grows with the file (a zip's directory) (:func:`recognise`);
* **how it is imported**: a ``makes = "dataset"`` format writes the canonical HDF5 file
  (:meth:`DatasetFormat.write_hdf5`); a ``makes = "annotations"`` format reads labelled images
  (:meth:`DatasetFormat.read_labelled`) that the annotation library stores;
* **how it exports**, if it does: ``export_as`` (the word of ``?format=``) and
  :meth:`DatasetFormat.write_export`; the ``canonical`` format is the dataset's own file, handed out as it is.

The API's upload route and its refusal (which names the known formats), the Datasets page's uploader and
download buttons, the import job and the export all read :func:`list_formats`.

To add a format: a module in this package with one registered class, imported at the bottom of this file,
and a sample file of it, written the way another tool writes one, in ``tests/engine/test_formats.py``
(the test is parametrized over the registry and fails for a format without a sample).
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine import archives
from engine.archives import AnnotatedZip, ZipLimits
from engine.exceptions import InvalidInput

__all__ = [
    "Container",
    "DatasetFormat",
    "ImportBudget",
    "ImportOptions",
    "Imported",
    "Probe",
    "canonical_format",
    "describe_formats",
    "export_formats",
    "get_export",
    "get_format",
    "list_containers",
    "list_formats",
    "recognise",
    "register_format",
    "sniff",
    "unknown_file",
    "upload_suffixes",
]

HEAD_BYTES = 8  # the longest magic number of a container


@dataclass(frozen=True)
class Container:
    """A kind of file that one or more formats come in, told apart by its first bytes.

    Attributes:
        name: what the request reports as the upload's ``format`` (``"zip"``, ``"hdf5"``).
        noun: the container in a sentence ("a zip", "an HDF5 file").
        magic: the first bytes a file of this kind starts with (any of them).
        check: the request's cheap check of a file of this kind (a zip's end record); it returns what the
            request's answer tells of the file and raises InvalidInput naming ``file``.
    """

    name: str
    noun: str
    magic: tuple[bytes, ...]
    check: Callable[[Path, ZipLimits], dict[str, Any]]

    def holds(self, head: bytes) -> bool:
        """Whether a file starting with ``head`` is of this kind."""
        return any(head.startswith(magic) for magic in self.magic)


def _check_zip(path: Path, limits: ZipLimits) -> dict[str, Any]:
    return {"entries": archives.check_directory(path, limits)}


def _check_nothing(_path: Path, _limits: ZipLimits) -> dict[str, Any]:
    return {}


ZIP = Container("zip", "a zip", (b"PK\x03\x04", b"PK\x05\x06"), _check_zip)
HDF5 = Container("hdf5", "an HDF5 file", (b"\x89HDF\r\n\x1a\n",), _check_nothing)


@dataclass(frozen=True)
class ImportOptions:
    """What the request chose for an import (each format uses what applies to it).

    Attributes:
        test_fraction: share of each class held out, when the file has no split of its own.
        seed: seed of that split.
        image_size: resize to this square (None: keep one shared size, else 224).
        skip_bad_images: import the rest when some images do not decode.
        source: the uploaded file's name, kept in the dataset's ``origin`` attribute.
    """

    test_fraction: float = 0.2
    seed: int = 0
    image_size: int | None = None
    skip_bad_images: bool = False
    source: str = ""


def _no_reservation(_needed: int, _field: str, _what: str, _hint: str) -> None:
    return None


@dataclass(frozen=True)
class ImportBudget:
    """What the importing job allows, and how it is told of progress (the engine reads no configuration).

    Attributes:
        max_bytes: the largest dataset file that may be written (``MAX_DATASET_MB``); None: any.
        max_pixels: the largest image (pixels) decoded.
        limits: what a zip may hold.
        reserve: called with ``(bytes, field, what, hint)`` once the output's size is known and before
            anything is written; it raises to refuse (a disk reservation).
        on_progress: ``(images done, images total)``.
        should_stop: polled while images are written.
    """

    max_bytes: int | None = None
    max_pixels: int = 50_000_000
    limits: ZipLimits = field(default_factory=ZipLimits)
    reserve: Callable[[int, str, str, str], None] = _no_reservation
    on_progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class Imported:
    """What an import into the canonical HDF5 wrote.

    Attributes:
        class_names: the classes, in label order.
        counts: images per split and class.
        shape: ``[height, width]`` of the stored images.
        layout: how the file was laid out (``"class_folders"``, ``"split_folders"``, ``"hdf5"``).
        images: images the file listed (None when not counted apart).
        bad_images: images skipped because they did not decode.
        ignored: other members of the file (the first hundred), and how many there were.
    """

    class_names: list[str]
    counts: dict[str, dict[str, int]]
    shape: list[int]
    layout: str
    images: int | None = None
    bad_images: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    ignored_total: int = 0


class Probe:
    """What the import job looks at to tell the formats of one container apart; each part is read once.

    Attributes:
        path: the file.
        limits: what a zip may hold (its directory is read under them).
    """

    def __init__(self, path: str | os.PathLike, limits: ZipLimits | None = None):
        self.path = Path(path)
        self.limits = limits or ZipLimits()

    @functools.cached_property
    def label_file(self) -> str | None:
        """The one label file at the top of a zip (an ending some format declares in ``label_suffix``), or None."""
        suffixes = tuple(f.label_suffix for f in list_formats() if f.label_suffix)
        return archives.find_annotation_file(self.path, suffixes, self.limits)


class DatasetFormat(ABC):
    """A format of dataset files; subclass it, set the attributes and register it with :func:`register_format`.

    Attributes:
        name: the registry name.
        description: what a file of this format holds, for people (the uploader's help, the API's refusals).
        container: the kind of file it comes in.
        suffixes: file endings the uploader offers; the first is the ending of its downloads.
        makes: ``"dataset"`` (the canonical HDF5 file) or ``"annotations"`` (labelled images).
        label_suffix: the ending of the label file a zip of this format holds at its top, if it holds one.
        export_as: the word of ``?format=`` that downloads a dataset in this format; None: import only.
        export_label: the download in a few words ("HDF5").
        canonical: the format of the datasets' own files: its export is the file itself.
    """

    name: str = ""
    description: str = ""
    container: Container = ZIP
    suffixes: tuple[str, ...] = ()
    makes: Literal["dataset", "annotations"] = "dataset"
    label_suffix: str | None = None
    export_as: str | None = None
    export_label: str = ""
    canonical: bool = False

    @abstractmethod
    def recognises(self, probe: Probe) -> bool:
        """Whether the file (already of this format's container) is of this format."""

    def write_hdf5(self, source: Path, target: Path, options: ImportOptions, budget: ImportBudget) -> Imported:
        """Import ``source`` into the canonical HDF5 file ``target`` (``makes == "dataset"``)."""
        raise NotImplementedError(f"format {self.name!r} makes {self.makes}, not a dataset file")

    def read_labelled(self, source: Path, limits: ZipLimits) -> AnnotatedZip:
        """The labelled images of ``source`` (``makes == "annotations"``)."""
        raise NotImplementedError(f"format {self.name!r} makes {self.makes}, not annotations")

    def write_export(self, source: Path, target: Path, class_names: list[str], root: str) -> None:
        """Write the canonical HDF5 dataset ``source`` to ``target`` in this format (``export_as`` set)."""
        raise NotImplementedError(f"format {self.name!r} does not export")


_REGISTRY: dict[str, DatasetFormat] = {}


def register_format(cls: type[DatasetFormat]) -> type[DatasetFormat]:
    """Class decorator that adds a format (one instance of ``cls``) to the registry."""
    fmt = cls()
    assert fmt.name and fmt.name not in _REGISTRY, f"format {fmt.name!r} registered twice or unnamed"
    assert fmt.suffixes and fmt.description, f"format {fmt.name!r} needs suffixes and a description"
    exporters = [f for f in _REGISTRY.values() if f.export_as]
    if fmt.export_as:  # a download is named and kept by its ending: one exporting format per ending
        assert fmt.export_as not in {f.export_as for f in exporters}, f"two formats export as {fmt.export_as!r}"
        assert fmt.suffixes[0] not in {f.suffixes[0] for f in exporters}, f"two exports end in {fmt.suffixes[0]}"
    _REGISTRY[fmt.name] = fmt
    return cls


def list_formats() -> list[DatasetFormat]:
    """Every registered format, in registration order."""
    return list(_REGISTRY.values())


def describe_formats() -> str:
    """The known formats in one sentence, for people: ``name (description); ...``."""
    return "; ".join(f"{f.name} ({f.description})" for f in list_formats())


def get_format(name: str) -> DatasetFormat:
    """The format registered as ``name``.

    Raises:
        InvalidInput: no such format (field ``format``, naming the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(f"unknown dataset format {name!r}; known: {', '.join(_REGISTRY)}", "format") from None


def canonical_format() -> DatasetFormat:
    """The format every dataset is stored in (the one registered with ``canonical = True``)."""
    return next(f for f in list_formats() if f.canonical)


def list_containers() -> list[Container]:
    """The kinds of file the registered formats come in (each once, in registration order)."""
    return list(dict.fromkeys(f.container for f in list_formats()))


def upload_suffixes() -> list[str]:
    """Every file ending an uploader offers, without the dot (``["zip", "hdf5", "h5"]``)."""
    return list(dict.fromkeys(s.lstrip(".") for f in list_formats() for s in f.suffixes))


def export_formats() -> dict[str, DatasetFormat]:
    """The formats a dataset downloads as, by the word of ``?format=`` (the canonical one first)."""
    found = sorted((f for f in list_formats() if f.export_as), key=lambda f: not f.canonical)
    return {f.export_as: f for f in found}


def get_export(word: str) -> DatasetFormat:
    """The format ``?format=word`` downloads as.

    Raises:
        InvalidInput: no format exports as ``word`` (field ``format``, naming those that do).
    """
    found = export_formats()
    if word not in found:
        raise InvalidInput(f"'format' must be one of {', '.join(found)}; got {word!r}", "format")
    return found[word]


def unknown_file(field: str = "file") -> InvalidInput:
    """The refusal of a file no container holds: it names the kinds of file and the known formats."""
    nouns = [c.noun for c in list_containers()]
    kinds = f"neither {nouns[0]} nor {' nor '.join(nouns[1:])}" if len(nouns) > 1 else f"not {nouns[0]}"
    return InvalidInput(f"'{field}' is {kinds}; the known formats are: {describe_formats()}", field)


def sniff(path: str | os.PathLike) -> Container:
    """The container of a file, from its first bytes (never from its name).

    With the container's :attr:`~Container.check`, this is all a request reads: a few bytes whatever the file holds.

    Raises:
        InvalidInput: no registered format comes in such a file (field ``file``; the message names the formats).
    """
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    container = next((c for c in list_containers() if c.holds(head)), None)
    if container is None:
        raise unknown_file()
    return container


def recognise(path: str | os.PathLike, container: str | None = None, limits: ZipLimits | None = None,
              field: str = "file") -> DatasetFormat:
    """The format of a file: its container (``container``'s name, or sniffed), then the one format of that
    container that recognises it. This may read what grows with the file: the import job asks it.

    Raises:
        InvalidInput: no format recognises the file (naming the known ones), or it is unsafe (field ``file``).
    """
    if container is None:
        container = sniff(path).name
    probe = Probe(path, limits)
    found = [f for f in list_formats() if f.container.name == container and f.recognises(probe)]
    if not found:
        raise unknown_file(field)
    assert len(found) == 1, f"formats {[f.name for f in found]} all recognise one file"
    return found[0]


# The formats register themselves on import, like the model zoo's families (imported last: they need the above).
from engine.formats import class_folders, coco, csv_labels, hdf5  # noqa: E402, F401, I001
