"""A zip of class folders: ``<class>/<image>`` (split here, seeded and stratified) or
``train|test/<class>/<image>`` (split kept), under any wrapping folders, as a file manager zips them."""

from __future__ import annotations

from pathlib import Path

from engine import archives
from engine.exceptions import InvalidInput
from engine.formats import ZIP, DatasetFormat, ImportBudget, Imported, ImportOptions, Probe, register_format


@register_format
class ClassFolders(DatasetFormat):
    name = "class_folders"
    description = "a zip of class folders: <class>/<image>, or train/<class>/<image> with test/ or val/"
    container = ZIP
    suffixes = (".zip",)
    makes = "dataset"
    export_as = "zip"
    export_label = "zip of class folders (PNG)"

    def recognises(self, probe: Probe) -> bool:
        return probe.label_file is None  # a zip with a label file at its top holds annotated images

    def write_hdf5(self, source: Path, target: Path, options: ImportOptions, budget: ImportBudget) -> Imported:
        archive = archives.read_class_folders(source, budget.limits)
        splits = archives.split_entries(archive, options.test_fraction, options.seed)
        attrs = {"origin": {"uploaded": options.source, "layout": archive.layout,
                            "test_fraction": options.test_fraction, "seed": options.seed}}
        report = archives.write_zip_as_hdf5(
            source, target, archive, splits, options.image_size, budget.max_pixels, options.skip_bad_images, attrs,
            on_progress=budget.on_progress, should_stop=budget.should_stop,
            before_write=lambda images, shape: _reserve(budget, images, shape))
        return Imported(archive.class_names, report.counts, list(report.shape), archive.layout,
                        len(archive.entries), report.bad_images, archive.ignored[:100], len(archive.ignored))

    def write_export(self, source: Path, target: Path, class_names: list[str], root: str) -> None:
        archives.write_hdf5_as_zip(source, target, class_names, root)


def _reserve(budget: ImportBudget, images: int, shape: tuple[int, int]) -> None:
    """Before a byte is written: refuse a dataset over the budget, then reserve its bytes on the disk.

    Raises:
        InvalidInput: over ``max_bytes``, naming ``image_size`` and the sizes.
    """
    needed = archives.hdf5_bytes(images, shape)
    what = (f"{images:,} images at {shape[0]}x{shape[1]} pixels (image_size) make a dataset of about "
            f"{needed / 2**20:,.0f} MB")
    if budget.max_bytes is not None and needed > budget.max_bytes:
        raise InvalidInput(f"'image_size': {what}; the limit is MAX_DATASET_MB ({budget.max_bytes // 2**20:,} MB): "
                           "choose a smaller image_size or split the dataset", "image_size")
    budget.reserve(needed, "image_size", what, "wait for them, or choose a smaller image_size")
