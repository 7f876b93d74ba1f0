"""The kinds of training data a run may read, declared without torch (the web process checks requests with them).

:func:`engine.datasets.register_dataset` gives each declared kind its builder; a kind is declared here once,
with the :class:`~engine.datasets.DatasetSpec` fields it needs.
"""

from __future__ import annotations

from types import MappingProxyType

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATASET_KINDS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "custom": ("trainset_dir", "testset_dir"),  # class folders of images
    "hdf5": ("hdf5_path",),  # an HDF5 file with train and test splits
    "newdata": ("newdata_dir",),  # the annotation feature's multi-label images
})


def list_dataset_kinds() -> dict[str, tuple[str, ...]]:
    """Return each dataset kind with the spec fields it requires."""
    return dict(sorted(DATASET_KINDS.items()))
