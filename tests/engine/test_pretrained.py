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

from engine.datasets import ArrayDataset, make_preprocessing, preprocess
from engine.exceptions import Cancelled, InvalidInput
from engine.features import cached_features, dataset_key
from engine.inference import Predictor
from engine.models import get_model_info
from engine.models.build import create_model, download_pretrained, pretrained_cache_file
from engine.training import TrainConfig, fit, fit_head
from engine.transfer import main as transfer_main
from tests.engine.conftest import LABELS

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


class _Response(io.BytesIO):
    """What ``urlopen`` returns, for a download that needs no network."""

    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def _resnet18_bytes(seed=0) -> tuple[dict, bytes]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


def test_torchvision_weights_download_into_the_cache_with_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    state, payload = _resnet18_bytes()
    asked, progress = [], []

    def opener(url, timeout):
        asked.append(url)
        return _Response(payload)

    path = download_pretrained("resnet18", on_progress=lambda d, t: progress.append((d, t)), opener=opener,
                               chunk=len(payload) // 3)
    # torchvision's own file name, in torch.hub's cache: torchvision itself would find it there.
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert progress[-1] == (len(payload), len(payload)) and len(progress) >= 3
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    model = create_model("resnet18", 5, pretrained=True)
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert download_pretrained("resnet18", opener=None) == path  # cached: never asks again


def test_offline_without_cache_is_a_clear_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(InvalidInput) as err:
        download_pretrained("alexnet", opener=offline)
    assert err.value.field == "pretrained"
    assert "could not be downloaded" in str(err.value) and "alexnet-owt-7be5be79.pth" in str(err.value)
    assert not pretrained_cache_file("alexnet").exists()
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []
    with pytest.raises(InvalidInput, match="not available offline"):
        create_model("alexnet", 3, pretrained=True)
    assert download_pretrained("efficientnet-lite0", opener=offline) is None  # bundled: nothing to fetch


def test_a_users_safetensors_file_loads_and_a_mismatched_file_lists_its_keys(tmp_path):
    from safetensors.torch import save_file

    state, _ = _resnet18_bytes(seed=3)
    save_file(state, tmp_path / "mine.safetensors")
    model = create_model("resnet18", 2, weights_path=tmp_path / "mine.safetensors")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    torch.save(create_model("efficientnet-lite0", 2).state_dict(), tmp_path / "other.pth")
    with pytest.raises(InvalidInput) as err:
        create_model("resnet18", 2, weights_path=tmp_path / "other.pth")
    message = str(err.value)
    assert err.value.field == "weights_path"
    assert "missing" in message and "conv1.weight" in message
    assert "unexpected" in message and "_conv_stem.weight" in message


# ------------------------------------------------------------------------------------ head-only transfer


def _faces(k=8, seed=0):
    """k labelled faces and k non-faces from skimage's LFW subset (real photos), the rest held out."""
    images = (data.lfw_subset() * 255).round().astype(np.uint8)
    labels = np.r_[np.ones(100, int), np.zeros(100, int)]
    rng = np.random.default_rng(seed)
    train = np.r_[rng.choice(100, k, replace=False), 100 + rng.choice(100, k, replace=False)]
    test = np.setdiff1d(np.arange(200), train)[::3]
    return images, labels, train, test


def _head_config(**overrides):
    base = dict(model_name="efficientnet-lite0", num_classes=2, epochs=25, batch_size=8, learning_rate=1e-3,
                optimizer="adam", pretrained=True, head_only=True, image_size=96)
    return TrainConfig(**{**base, **overrides})


def test_head_only_learns_faces_from_eight_photos_each_and_reuses_its_cache(tmp_path):
    images, labels, train, test = _faces()
    config = _head_config()
    pre = config.preprocessing()
    sets = ArrayDataset(images[train], labels[train], pre, train=True), ArrayDataset(images[test], labels[test], pre)
    progress = []
    first = fit_head(config, *sets, ["non-face", "face"], tmp_path / "a", tmp_path / "features",
                     on_progress=lambda d, t: progress.append((d, t)))
    assert first.best_score >= 90, first.history[-1]
    assert progress[-1] == (len(train), len(train)) or progress[-1] == (len(test), len(test))
    cached = sorted((tmp_path / "features").glob("*.h5"))
    assert len(cached) == 2  # the training and the held-out images
    again = fit_head(config, *sets, ["non-face", "face"], tmp_path / "b", tmp_path / "features",
                     on_progress=lambda d, t: pytest.fail("the backbone ran again"))
    assert again.history == first.history or [r["test_accuracy"] for r in again.history] == [
        r["test_accuracy"] for r in first.history]
    # The checkpoint is a whole network: inference rebuilds it and agrees with the held-out score.
    predictor = Predictor(first.best_path)
    found = predictor.predict_batch(list(images[test]))
    accuracy = np.mean([(p["label"] == "face") == bool(t) for p, t in zip(found, labels[test], strict=True)])
    assert 100 * accuracy == pytest.approx(first.best_score)
    best = torch.load(first.best_path, weights_only=True)
    bundled = create_model("efficientnet-lite0", 1000, pretrained=True).state_dict()
    layer = "_blocks.5._depthwise_conv.weight"
    assert torch.equal(best["state_dict"][layer], bundled[layer])
    assert best["config"]["head_only"] is True


def test_the_cache_key_follows_images_size_and_weights():
    images, labels, train, _ = _faces(k=3)
    model = create_model("efficientnet-lite0", 2, pretrained=True)
    pre = make_preprocessing(64)
    key = dataset_key("efficientnet-lite0", model, ArrayDataset(images[train], labels[train], pre))
    assert key == dataset_key("efficientnet-lite0", model, ArrayDataset(images[train].copy(), labels[train], pre))
    changed = images[train].copy()
    changed[0, 0, 0] ^= 1
    assert key != dataset_key("efficientnet-lite0", model, ArrayDataset(changed, labels[train], pre))
    assert key != dataset_key("efficientnet-lite0", model, ArrayDataset(images[train], labels[train][::-1].copy(), pre))
    bigger = make_preprocessing(72)
    assert key != dataset_key("efficientnet-lite0", model, ArrayDataset(images[train], labels[train], bigger))
    scratch = create_model("efficientnet-lite0", 2)
    assert key != dataset_key("efficientnet-lite0", scratch, ArrayDataset(images[train], labels[train], pre))
    model.reset_classifier(5)  # the head is not part of the backbone
    assert key == dataset_key("efficientnet-lite0", model, ArrayDataset(images[train], labels[train], pre))


def test_head_only_with_augmentation_caches_copies_and_says_so(tmp_path):
    images, labels, train, test = _faces(k=4)
    config = _head_config(augment=True, augment_copies=3, epochs=2)
    pre = config.preprocessing()
    model = create_model("efficientnet-lite0", 2, pretrained=True)
    found = cached_features("efficientnet-lite0", model, ArrayDataset(images[train], labels[train], pre, train=True),
                            tmp_path, copies=3)
    assert found.features.shape == (3 * len(train), 1280) and not found.from_cache
    assert not np.allclose(found.features[: len(train)], found.features[len(train) : 2 * len(train)])
    result = fit_head(config, ArrayDataset(images[train], labels[train], pre, train=True),
                      ArrayDataset(images[test], labels[test], pre), ["non-face", "face"], tmp_path / "run", tmp_path)
    assert result.history[0]["train_samples_per_s"] > 0
    saved = torch.load(result.last_path, weights_only=True)["config"]
    assert saved["augment"] and saved["augment_copies"] == 3


def test_multi_label_head_on_the_pretrained_backbone_reports_map(tmp_path):
    images, labels, train, test = _faces(k=12)
    dark = (images.reshape(200, -1).mean(1) < np.median(images)).astype(int)
    tags = np.stack([labels, dark], axis=1)
    config = _head_config(num_classes=2, multi_label=True, epochs=30)
    pre = config.preprocessing()
    result = fit_head(config, ArrayDataset(images[train], tags[train], pre, train=True),
                      ArrayDataset(images[test], tags[test], pre), ["face", "dark"], tmp_path / "run", tmp_path / "f")
    assert result.monitor == "test_map" and result.best_score >= 80
    assert set(result.evaluation["per_class"]) == {"face", "dark"} and len(result.evaluation["thresholds"]) == 2


def test_head_only_needs_weights_and_fine_tune_trains_the_backbone_slower(tmp_path):
    with pytest.raises(InvalidInput) as err:
        _head_config(pretrained=False)
    assert err.value.field == "head_only"
    images, labels, train, test = _faces(k=2)
    config = _head_config(head_only=False, lr_pretrained=1e-4, epochs=1, image_size=64, optimizer="sgd")
    pre = config.preprocessing()
    result = fit(config, ArrayDataset(images[train], labels[train], pre, train=True),
                 ArrayDataset(images[test[:6]], labels[test[:6]], pre), ["non-face", "face"], tmp_path)
    tuned = torch.load(result.last_path, weights_only=True)["state_dict"]
    bundled = create_model("efficientnet-lite0", 2, pretrained=True).state_dict()
    assert not torch.equal(tuned["_conv_head.weight"], bundled["_conv_head.weight"])
    assert torch.load(result.last_path, weights_only=True)["optimizer"]["param_groups"][1]["lr"] == 1e-4


def test_the_legacy_transfer_example_runs_on_the_bundled_backbone(data_dir, capsys):  # noqa: F811
    # The legacy pipeline's example (python main.py -b 4 --resume ... --epochs 10 --result ...) on a fresh install:
    # nobody has its checkpoint, so no --resume; nothing is downloaded.
    out = data_dir / "output" / "coco.csv"
    assert transfer_main(["--data-dir", str(data_dir), "-b", "4", "--epochs", "10", "--result", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "efficientnet-lite0, head only" in printed and "Epoch [10/10]" in printed
    best = torch.load(data_dir / "checkpoints" / "transfer" / "best.pt", weights_only=True)
    assert best["model"]["name"] == "efficientnet-lite0" and best["config"]["head_only"]
    rows = out.read_text().splitlines()
    assert rows[0] == ",".join(["Id", "Tag", "Predict_tag", *LABELS]) and len(rows) > 1
    assert list((data_dir / "features").glob("*.h5"))


def test_a_head_only_run_resumes_and_a_cancel_keeps_its_last_epoch(tmp_path):
    images, labels, train, test = _faces(k=4)
    pre = _head_config().preprocessing()
    sets = ArrayDataset(images[train], labels[train], pre, train=True), ArrayDataset(images[test], labels[test], pre)
    names = ["non-face", "face"]
    done = []
    with pytest.raises(Cancelled):
        fit_head(_head_config(epochs=4), *sets, names, tmp_path / "a", tmp_path / "f", on_epoch=done.append,
                 should_stop=lambda: len(done) >= 2)
    last = tmp_path / "a" / "last.pt"
    assert [r["epoch"] for r in torch.load(last, weights_only=True)["history"]] == [1, 2]
    assert (tmp_path / "a" / "best.pt").is_file()
    resumed = fit_head(_head_config(epochs=4), *sets, names, tmp_path / "b", tmp_path / "f", resume_from=last)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
