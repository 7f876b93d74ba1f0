"""The model registry, tested whole (timm's test_models.py style): every model has the same face."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision

from engine import checkpoints
from engine.datasets import ArrayDataset
from engine.exceptions import InvalidInput
from engine.inference import export_model, rebuild_model
from engine.models import get_model_info, list_models
from engine.models.build import create_model, head_parameter_names
from engine.training import TrainConfig, build_criterion, compute_loss, fit

torch.set_num_threads(1)
MODELS = [info.name for info in list_models()]


def _batch(info, in_chans=3, n=4, size=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = size or info.min_input_size
    return torch.randn(n, in_chans, side, side, generator=g)


def test_registry_lists_every_family_with_its_entry():
    names = set(MODELS)
    assert {f"convnet{c}" for c in "abcdefghijklmn"} <= names
    assert {"alexnet", "lenet5", "stn-lenet5", "stn-alexnet", "capsnet", "resnet18"} <= names
    for info in list_models():
        assert info.description and info.default_input_size >= info.min_input_size >= 16
    families = {"alexnet", "capsnet", "convnets", "efficientnet", "lenet", "resnet", "stn"}
    assert {i.family for i in list_models()} == families


def test_unknown_model_names_the_field_and_the_known_models():
    with pytest.raises(InvalidInput) as err:
        create_model("convnetz", 3)
    assert err.value.field == "model_name"
    assert "known: " in str(err.value) and "convnetj" in str(err.value)


def test_convnets_are_distinct_designs():
    structures = {
        name: tuple(type(m).__name__ for m in create_model(name, 3).modules())
        for name in MODELS
        if name.startswith("convnet")
    }
    assert len(set(structures.values())) == 14


@pytest.mark.parametrize("name", MODELS)
def test_forward_at_two_sizes_grey_and_reset(name):
    info = get_model_info(name)
    torch.manual_seed(0)
    model = create_model(name, 3).eval()
    assert model.num_classes == 3
    with torch.no_grad():
        square = model(_batch(info, n=2))
        odd = model(torch.randn(2, 3, info.min_input_size + 7, info.min_input_size + 13))
        assert square.shape == odd.shape == (2, 3)
        assert torch.isfinite(square).all() and torch.isfinite(odd).all()
        grey = create_model(name, 4, in_chans=1).eval()
        assert grey(_batch(info, in_chans=1, n=2)).shape == (2, 4)
        model.reset_classifier(7)
        assert model.num_classes == 7 and model(_batch(info, n=2)).shape == (2, 7)
    assert head_parameter_names(model), "get_classifier() must name the classifier's tensors"


@pytest.mark.parametrize("name", MODELS)
def test_a_few_training_steps_lower_the_loss(name):
    info = get_model_info(name)
    torch.manual_seed(0)
    model = create_model(name, 3).train()
    images, targets = _batch(info, n=8), torch.arange(8) % 3
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    criterion = build_criterion(multi_label=False)
    losses = []
    for _ in range(5):
        torch.manual_seed(1)  # the same dropout masks every step: the loss is then one fixed function
        loss, logits = compute_loss(model, images, targets, criterion)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert logits.shape == (8, 3)
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", [n for n in MODELS if get_model_info(n).multi_label_ok])
def test_multi_label_head_trains_with_bce(name):
    info = get_model_info(name)
    torch.manual_seed(0)
    model = create_model(name, 4, multi_label=True).train()
    targets = (torch.arange(16).view(4, 4) % 3 == 0).float()
    loss, logits = compute_loss(model, _batch(info, n=4), targets, build_criterion(multi_label=True))
    loss.backward()
    assert model.multi_label and logits.shape == (4, 4) and torch.isfinite(loss)


def test_models_refusing_multi_label_say_so():
    refusing = [i.name for i in list_models() if not i.multi_label_ok]
    assert refusing == ["capsnet"]
    with pytest.raises(InvalidInput) as err:
        create_model("capsnet", 3, multi_label=True)
    assert err.value.field == "multi_label"


def test_spatial_transformer_starts_as_identity():
    model = create_model("stn-lenet5", 3).eval()
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.allclose(model.stn(x), x, atol=1e-5)


def test_capsnet_logits_are_capsule_lengths_in_logit_space():
    model = create_model("capsnet", 4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        lengths = model.capsules(x).norm(dim=-1)
        assert torch.allclose(torch.sigmoid(model(x)), lengths, atol=1e-5)
    loss, _ = model.compute_loss(x, torch.tensor([0, 3]))
    assert loss > 0  # margin loss + reconstruction


def _torchvision_weights(tmp_path, in_chans_note="rgb"):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()  # the layout of the ImageNet file
    path = tmp_path / f"resnet18-{in_chans_note}.pth"
    torch.save(state, path)
    return state, path


def test_weights_file_loads_backbone_and_keeps_a_fresh_head(tmp_path):
    state, path = _torchvision_weights(tmp_path)
    model = create_model("resnet18", 5, weights_path=path)
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert model.fc.out_features == 5
    grey = create_model("resnet18", 5, in_chans=1, weights_path=path)
    assert torch.allclose(grey.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_pretrained_uses_torchvision_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InvalidInput) as err:
        create_model("resnet18", 3, pretrained=True)
    assert err.value.field == "pretrained" and "resnet18-f37072fd.pth" in str(err.value)
    state, path = _torchvision_weights(tmp_path)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    path.rename(cache / "resnet18-f37072fd.pth")
    model = create_model("resnet18", 3, pretrained=True)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    with pytest.raises(InvalidInput) as err:
        create_model("convnetj", 3, pretrained=True)
    assert err.value.field == "pretrained"


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "convnetb.pt"
    torch.save(create_model("convnetb", 3).state_dict(), path)
    with pytest.raises(InvalidInput) as err:
        create_model("resnet18", 3, weights_path=path)
    assert err.value.field == "weights_path"
    with pytest.raises(InvalidInput):
        create_model("resnet18", 3, weights_path=tmp_path / "missing.pt")


def _untrained_checkpoint(name, tmp_path):
    """A real checkpoint of an untrained model: fit with 0 epochs writes last.pt."""
    info = get_model_info(name)
    config = TrainConfig(model_name=name, num_classes=3, epochs=0, image_size=info.min_input_size)
    images = np.zeros((3, info.min_input_size, info.min_input_size, 3), dtype=np.uint8)
    data = ArrayDataset(images, [0, 1, 2], config.preprocessing())
    return fit(config, data, data, ["a", "b", "c"], tmp_path / name).last_path


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", MODELS)
def test_export_matches_the_model(name, tmp_path):
    ckpt_path = _untrained_checkpoint(name, tmp_path)
    model = rebuild_model(checkpoints.load(ckpt_path))
    x = _batch(get_model_info(name), n=3, seed=5)  # a batch size other than the traced one
    with torch.no_grad():
        expected = model(x).numpy()
    scripted = torch.jit.load(str(export_model(ckpt_path, "torchscript", tmp_path / "m.pt")))
    np.testing.assert_allclose(scripted(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    onnx_path = export_model(ckpt_path, "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
