"""Pretrained backbones: the bundled EfficientNet-Lite0, torchvision's weights path, users' files, transfer."""

from __future__ import annotations

import io
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from skimage import data
from torchvision.models._meta import _IMAGENET_CATEGORIES

from engine.datasets import make_preprocessing, preprocess
from engine.exceptions import InvalidInput
from engine.models import (
    create_model,
    download_pretrained,
    get_model_info,
    pretrained_cache_file,
)

torch.set_num_threads(1)

# Real photos and the ImageNet classes a person would accept for them.
PHOTOS = {
    "chelsea": ({281, 282, 283, 284, 285}, "cat"),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": ({967, 968, 504}, "coffee"),  # espresso, cup, coffee mug
    "rocket": ({657, 744, 812}, "rocket"),  # missile, projectile, space shuttle
}


@pytest.fixture(scope="module")
def imagenet_lite0():
    return create_model("efficientnet-lite0", 1000, pretrained=True).eval()


def test_efficientnet_lite0_is_registered_with_bundled_weights():
    info = get_model_info("efficientnet-lite0")
    assert info.has_pretrained and info.bundled_weights and info.default_input_size == 224


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_bundled_weights_name_real_photos_offline(imagenet_lite0, photo):
    expected, _ = PHOTOS[photo]
    preprocessing = make_preprocessing(224)
    with torch.inference_mode():
        logits = imagenet_lite0(preprocess(getattr(data, photo)(), preprocessing)[None])
    top1 = int(logits.argmax())
    assert top1 in expected, f"{photo} came out as {_IMAGENET_CATEGORIES[top1]!r}"


def test_bundled_weights_with_a_new_head_keep_the_backbone():
    model = create_model("efficientnet-lite0", 4, pretrained=True)
    imagenet = create_model("efficientnet-lite0", 1000, pretrained=True)
    assert model.num_classes == 4 and model.get_classifier().out_features == 4
    assert torch.equal(model._conv_head.weight, imagenet._conv_head.weight)
    grey = create_model("efficientnet-lite0", 2, in_chans=1, pretrained=True)
    assert torch.allclose(grey._conv_stem.weight, imagenet._conv_stem.weight.sum(1, keepdim=True))
