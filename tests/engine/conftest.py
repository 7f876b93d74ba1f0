"""Fixtures the engine tests share."""

from __future__ import annotations

import pytest
from PIL import Image

from engine import labels as labelsets

LABELS = ["red", "green", "blue"]


@pytest.fixture()
def data_dir(tmp_path):
    """newdata/ with 12 labelled images: each colour label lights one third of the picture."""
    newdata = tmp_path / "newdata"
    labelsets.write_label_set(newdata, LABELS)
    for i in range(12):
        chosen = [label for bit, label in enumerate(LABELS) if (i + 1) >> bit & 1]
        image = Image.new("RGB", (24, 24), (20, 20, 20))
        for bit, label in enumerate(LABELS):
            if label in chosen:
                colour = tuple(220 if c == bit else 20 for c in range(3))
                image.paste(colour, (8 * bit, 0, 8 * bit + 8, 24))
        image.save(tmp_path / "upload.png")
        labelsets.save_image_atomic(newdata, f"img_{i}", (tmp_path / "upload.png").read_bytes(), "png")
        labelsets.write_annotation(newdata, f"img_{i}", chosen, LABELS)
    return tmp_path
