"""Augmentation transforms: small frozen classes over :mod:`engine.augment.functional`, one registry.

Every transform is called as ``t(image, mask, rng) -> (image, mask)``: the mask (or None) follows the
image through every geometric change, and all randomness comes from the injected, seeded
``numpy.random.Generator``, so the same seed gives the same output. Parameters are checked when the
transform is built; a bad one raises :class:`~engine.exceptions.InvalidInput` naming the transform in the
message and the parameter in ``field``.

The registry (:func:`register_transform`, :func:`create_transform`, :func:`list_transforms`) is the
only list of transform names: the UI's choices and the API's validation read it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from engine.augment import functional as F
from engine.exceptions import InvalidInput

_REGISTRY: dict[str, type[Transform]] = {}
Pair = tuple[np.ndarray, np.ndarray | None]


def register_transform(name: str) -> Callable[[type[Transform]], type[Transform]]:
    """Class decorator that adds a transform to the registry under ``name``."""

    def decorate(cls: type[Transform]) -> type[Transform]:
        if name in _REGISTRY:
            raise ValueError(f"transform {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_transforms() -> list[str]:
    """Names of every registered transform, sorted."""
    return sorted(_REGISTRY)


def create_transform(name: str, **params: Any) -> Transform:
    """Build the transform registered as ``name`` with ``params`` (defaults for the rest).

    Raises:
        InvalidInput: unknown name (``field="transform"``), unknown or bad parameter (``field`` = its name).
    """
    if name not in _REGISTRY:
        known = ", ".join(list_transforms())
        raise InvalidInput(f"unknown transform {name!r}; known: {known}", "transform")
    cls = _REGISTRY[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidInput(f"{name}: unknown parameter {key!r}; known: {known}", key)
    return cls(**params)


def describe_transform(name: str) -> dict[str, Any]:
    """Name, kind (photometric or geometric), one-line description and default parameters of a transform."""
    if name not in _REGISTRY:
        create_transform(name)  # raises the usual "unknown transform" error
    cls = _REGISTRY[name]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    return {"name": name, "kind": cls.kind, "description": summary, "params": defaults}


class Transform:
    """Base class: subclasses are frozen dataclasses whose fields are the parameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "photometric"

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> Pair:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{self.name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return self.apply(image, mask, rng)

    def apply(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> Pair:
        raise NotImplementedError

    # -- parameter checks shared by the subclasses' __post_init__

    def _invalid(self, field: str, message: str) -> InvalidInput:
        return InvalidInput(f"{self.name}: '{field}' {message}", field)

    def _number(self, field: str, low: float, high: float) -> float:
        value = getattr(self, field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._invalid(field, f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise self._invalid(field, f"must be in {low}..{high}, got {value!r}")
        return float(value)

    def _integer(self, field: str, low: int, high: int) -> int:
        value = getattr(self, field)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise self._invalid(field, f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise self._invalid(field, f"must be in {low}..{high}, got {value!r}")
        return int(value)

    def _number_list(self, field: str, low: float, high: float, integer: bool = False) -> tuple:
        values = getattr(self, field)
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
            raise self._invalid(field, f"must be a non-empty list of numbers in {low}..{high}")
        for value in values:
            ok_type = isinstance(value, int | np.integer) if integer else isinstance(value, int | float)
            if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not low <= value <= high:
                kind = "whole numbers" if integer else "numbers"
                raise self._invalid(field, f"must hold {kind} in {low}..{high}, got {value!r}")
        object.__setattr__(self, field, tuple(values))  # frozen dataclass: normalise lists to tuples
        return tuple(values)

    def _ordered(self, low_field: str, high_field: str) -> None:
        if getattr(self, low_field) > getattr(self, high_field):
            raise self._invalid(low_field, f"must not exceed '{high_field}'")


class PhotometricTransform(Transform):
    """A colour change: the mask passes through untouched."""

    kind: ClassVar[str] = "photometric"

    def apply(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> Pair:
        return self.apply_image(image, rng), mask

    def apply_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class GeometricTransform(Transform):
    """A change of geometry: the same change moves the mask (nearest-neighbour, labels preserved)."""

    kind: ClassVar[str] = "geometric"


class Compose:
    """Apply transforms one after another, threading image, mask and the same ``rng`` through."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = tuple(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> Pair:
        for transform in self.transforms:
            image, mask = transform(image, mask, rng)
        return image, mask


# ------------------------------------------------------------------------------------------ photometric


@register_transform("brightness")
@dataclass(frozen=True)
class Brightness(PhotometricTransform):
    """Shift brightness by a random amount in ±limit of full scale."""

    limit: float = 0.2

    def __post_init__(self):
        self._number("limit", 0.0, 1.0)

    def apply_image(self, image, rng):
        return F.adjust_brightness(image, rng.uniform(-self.limit, self.limit))


@register_transform("contrast")
@dataclass(frozen=True)
class Contrast(PhotometricTransform):
    """Scale contrast around the mean grey by a random factor in 1 ± limit."""

    limit: float = 0.2

    def __post_init__(self):
        self._number("limit", 0.0, 1.0)

    def apply_image(self, image, rng):
        return F.adjust_contrast(image, rng.uniform(1.0 - self.limit, 1.0 + self.limit))


@register_transform("gamma")
@dataclass(frozen=True)
class Gamma(PhotometricTransform):
    """Gamma curve with gamma drawn log-uniformly in [low, high]."""

    low: float = 0.7
    high: float = 1.4

    def __post_init__(self):
        self._number("low", 0.1, 10.0)
        self._number("high", 0.1, 10.0)
        self._ordered("low", "high")

    def apply_image(self, image, rng):
        return F.adjust_gamma(image, math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@register_transform("gaussian")
@dataclass(frozen=True)
class GaussianBlur(PhotometricTransform):
    """Gaussian blur with sigma drawn uniformly in [sigma_min, sigma_max] pixels."""

    sigma_min: float = 0.3
    sigma_max: float = 1.5

    def __post_init__(self):
        self._number("sigma_min", 0.0, 20.0)
        self._number("sigma_max", 0.0, 20.0)
        self._ordered("sigma_min", "sigma_max")

    def apply_image(self, image, rng):
        return F.gaussian_blur(image, rng.uniform(self.sigma_min, self.sigma_max))


@register_transform("color")
@dataclass(frozen=True)
class Color(PhotometricTransform):
    """Scale colour saturation by a random factor in 1 ± limit (0 would be grey)."""

    limit: float = 0.3

    def __post_init__(self):
        self._number("limit", 0.0, 1.0)

    def apply_image(self, image, rng):
        return F.adjust_saturation(image, rng.uniform(1.0 - self.limit, 1.0 + self.limit))


# -------------------------------------------------------------------------------------------- geometric


@register_transform("rotation")
@dataclass(frozen=True)
class Rotation(GeometricTransform):
    """Rotate by an angle picked from ``angles`` (degrees, anticlockwise); the canvas grows to fit."""

    angles: tuple[float, ...] = (-30.0, -15.0, 15.0, 30.0)

    def __post_init__(self):
        self._number_list("angles", -360.0, 360.0)

    def apply(self, image, mask, rng):
        angle = float(self.angles[rng.integers(len(self.angles))])
        return F.rotate(image, angle), None if mask is None else F.rotate(mask, angle, nearest=True)


@register_transform("scale")
@dataclass(frozen=True)
class Scale(GeometricTransform):
    """Resize so the longest side is a size picked from ``sizes`` (pixels), keeping the aspect ratio."""

    sizes: tuple[int, ...] = (224,)

    def __post_init__(self):
        self._number_list("sizes", 1, 8192, integer=True)

    def apply(self, image, mask, rng):
        size = int(self.sizes[rng.integers(len(self.sizes))])
        new_mask = None if mask is None else F.resize_longest(mask, size, nearest=True)
        return F.resize_longest(image, size), new_mask


@dataclass(frozen=True)
class _Flip(GeometricTransform):
    p: float = 0.5
    mode: ClassVar[str] = "horizontal"

    def __post_init__(self):
        self._number("p", 0.0, 1.0)

    def apply(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        return F.flip(image, self.mode), None if mask is None else F.flip(mask, self.mode)


@register_transform("flip_horizontal")
@dataclass(frozen=True)
class FlipHorizontal(_Flip):
    """Mirror left-right with probability p."""

    mode: ClassVar[str] = "horizontal"


@register_transform("flip_vertical")
@dataclass(frozen=True)
class FlipVertical(_Flip):
    """Mirror top-bottom with probability p."""

    mode: ClassVar[str] = "vertical"


@register_transform("flip_both")
@dataclass(frozen=True)
class FlipBoth(_Flip):
    """Mirror both ways (a 180° rotation, not a transpose) with probability p."""

    mode: ClassVar[str] = "both"


@register_transform("center_crop")
@dataclass(frozen=True)
class CenterCrop(GeometricTransform):
    """Keep the centred square of a side picked from ``windows`` (pixels; shrunk to fit small images)."""

    windows: tuple[int, ...] = (112,)

    def __post_init__(self):
        self._number_list("windows", 1, 8192, integer=True)

    def apply(self, image, mask, rng):
        box = F.center_crop_box(image.shape, int(self.windows[rng.integers(len(self.windows))]))
        return F.crop(image, *box), None if mask is None else F.crop(mask, *box)


@register_transform("sliding_window")
@dataclass(frozen=True)
class SlidingWindow(GeometricTransform):
    """Keep one ``window``-square crop picked from the grid of crops every ``stride`` pixels.

    This is what the legacy API's ``apply_occulsion`` / ``occulsion_window`` / ``occulsion_stride`` describe.
    """

    window: int = 112
    stride: int = 56

    def __post_init__(self):
        self._integer("window", 1, 8192)
        self._integer("stride", 1, 8192)

    def apply(self, image, mask, rng):
        origins = F.sliding_window_origins(image.shape, self.window, self.stride)
        x, y = origins[rng.integers(len(origins))]
        box = (x, y, self.window, self.window)
        return F.crop(image, *box), None if mask is None else F.crop(mask, *box)


@register_transform("random_erasing")
@dataclass(frozen=True)
class RandomErasing(GeometricTransform):
    """Occlude a random rectangle (area and aspect drawn from ranges) with noise, a flat colour or zeros.

    With probability ``p``. The mask is cleared under the rectangle: it shows what is still visible.
    """

    p: float = 0.5
    area_min: float = 0.02
    area_max: float = 0.2
    aspect_min: float = 0.3
    aspect_max: float = 3.3
    fill: str = "noise"

    fills: ClassVar[tuple[str, ...]] = ("noise", "color", "zero")

    def __post_init__(self):
        self._number("p", 0.0, 1.0)
        self._number("area_min", 0.0, 1.0)
        self._number("area_max", 0.0, 1.0)
        self._ordered("area_min", "area_max")
        self._number("aspect_min", 0.01, 100.0)
        self._number("aspect_max", 0.01, 100.0)
        self._ordered("aspect_min", "aspect_max")
        if self.fill not in self.fills:
            raise self._invalid("fill", f"must be one of {', '.join(self.fills)}, got {self.fill!r}")

    def apply(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        x, y, w, h = self._rectangle(image.shape, rng)
        new_mask = None if mask is None else F.erase(mask, x, y, w, h, 0)
        colour = min(3, image.shape[2]) if image.ndim == 3 else None  # alpha, if any, is kept
        fill = self._fill_values((h, w) if colour is None else (h, w, colour), image.dtype, rng)
        out = image.copy()
        region = out[y : y + h, x : x + w]
        if colour is None:
            region[:] = fill
        else:
            region[:, :, :colour] = fill
        return out, new_mask

    def _rectangle(self, shape, rng) -> tuple[int, int, int, int]:
        height, width = shape[:2]
        area = rng.uniform(self.area_min, self.area_max) * height * width
        aspect = math.exp(rng.uniform(math.log(self.aspect_min), math.log(self.aspect_max)))
        w = int(np.clip(round(math.sqrt(area * aspect)), 1, width))
        h = int(np.clip(round(math.sqrt(area / aspect)), 1, height))
        return int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1)), w, h

    def _fill_values(self, shape, dtype, rng) -> np.ndarray | float:
        top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
        if self.fill == "zero":
            return 0
        size = shape if self.fill == "noise" else shape[2:]
        values = rng.uniform(0.0, top, size=size)
        return np.rint(values).astype(dtype) if np.issubdtype(dtype, np.integer) else values.astype(dtype)
