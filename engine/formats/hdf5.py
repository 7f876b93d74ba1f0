"""An HDF5 file of images and labels, as this project writes it or as people write one by hand with h5py:
``X_train``/``y_train`` with ``X_test``/``y_test`` (or ``X_val``/``y_val``), any dtype and channel order,
class indices, names or one-hot rows. It is also the canonical format: every dataset is stored as one."""

from __future__ import annotations

from pathlib import Path

from engine import archives
from engine.exceptions import InvalidInput
from engine.formats import HDF5, DatasetFormat, ImportBudget, Imported, ImportOptions, Probe, register_format


@register_format
class Hdf5File(DatasetFormat):
    name = "hdf5"
    description = "an HDF5 file of X_train/y_train and X_test/y_test (or X_val/y_val) arrays"
    container = HDF5
    suffixes = (".hdf5", ".h5")
    makes = "dataset"
    export_as = "hdf5"
    export_label = "HDF5"
    canonical = True

    def recognises(self, probe: Probe) -> bool:
        return True  # the only format of its container: the reader says what it refuses

    def write_hdf5(self, source: Path, target: Path, options: ImportOptions, budget: ImportBudget) -> Imported:
        """Rewrite the file in the project's own layout (whatever layout the reader accepted), so everything
        downstream (counts, thumbnails, export, training) reads one format.

        Before a byte is written, the reader refuses a file that points at other files or whose declared
        shapes decode to more than ``max_bytes``, and the output's bytes are reserved.
        """
        # The reader shares its module with the training datasets (and torch): only the import job pays for it.
        from engine.datasets import inspect_hdf5, write_canonical_hdf5

        summary = _named(lambda: inspect_hdf5(source, max_bytes=budget.max_bytes))
        budget.reserve(summary.canonical_bytes, "file",
                       f"its {sum(summary.split_sizes.values()):,} images make a dataset of about "
                       f"{summary.canonical_bytes / 2**20:,.0f} MB", "wait for them, or import fewer images")
        summary = _named(lambda: write_canonical_hdf5(source, target, on_progress=budget.on_progress,
                                                      should_stop=budget.should_stop, max_bytes=budget.max_bytes))
        names = summary.class_names
        return Imported(names, archives.split_counts(target, names), list(summary.image_shape[:2]), "hdf5")


def _named(read):
    """The reader's refusals, naming the upload's field."""
    try:
        return read()
    except InvalidInput as exc:
        raise InvalidInput(f"'file': {exc}", "file") from None
