"""Augmentation: transforms and their registry, compositing, backgrounds and HDF5 dataset generation.

``transforms`` holds the small transform classes over the pure functions of ``functional``;
``compositing`` pastes RGBA cut-outs onto backgrounds; ``backgrounds`` makes and lists the train/test
background sets; ``generate`` expands a :class:`~engine.augment.generate.GenerationConfig` into an
HDF5 dataset.
"""

from engine.augment.transforms import (
    Compose,
    Transform,
    create_transform,
    describe_transform,
    list_transforms,
    register_transform,
)

__all__ = [
    "Compose",
    "Transform",
    "create_transform",
    "describe_transform",
    "list_transforms",
    "register_transform",
]
