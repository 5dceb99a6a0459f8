"""Vision classifiers from torchvision architectures: shapes, the features/head split, parameter counts, the CIFAR
ResNet stem, JiT's VGG, ViT's in-model resize, and errors raised before anything is built."""

import sys

import pytest
import torch
from torch import nn

from unlearnkit._registry import MODELS
from unlearnkit.models import build_model
from unlearnkit.models.vision import ResizeToRGB

VISION = ("resnet18", "resnet50", "vgg16_bn", "vgg11", "vit_b_16")


def run(model: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [2, width], logits [2, C]) of a random batch of 2, in eval mode."""
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        feats = model.features(x)
        logits = model(x)
    assert torch.equal(model.head(feats), logits)
    return feats, logits


def test_vision_models_are_registered_classifiers():
    assert set(VISION) <= set(MODELS.list(task="classifier"))


def test_resnet18_cifar_stem_matches_the_known_parameter_count_and_is_seeded():
    model = build_model("resnet18", seed=0, input_shape=(3, 32, 32), num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the CIFAR ResNet-18 of SSD / RUM
    conv1 = model.features.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.in_channels) == ((3, 3), (1, 1), 3)
    assert isinstance(model.features.maxpool, nn.Identity)
    feats, logits = run(model, (3, 32, 32))
    assert feats.shape == (2, 512) and logits.shape == (2, 10) and model.head.in_features == 512
    same = build_model("resnet18", seed=0, input_shape=(3, 32, 32), num_classes=10)
    other = build_model("resnet18", seed=1, input_shape=(3, 32, 32), num_classes=10)
    assert torch.equal(same.features.conv1.weight, conv1.weight) and torch.equal(same.head.weight, model.head.weight)
    assert not torch.equal(other.features.conv1.weight, conv1.weight)


def test_resnet_imagenet_stem_and_one_channel_inputs():
    model = build_model("resnet18", seed=0, input_shape=(1, 32, 32), num_classes=3, stem="imagenet")
    conv1 = model.features.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.in_channels) == ((7, 7), (2, 2), 1)
    assert isinstance(model.features.maxpool, nn.MaxPool2d)
    assert run(model, (1, 32, 32))[1].shape == (2, 3)
    feats, logits = run(build_model("resnet50", seed=0, input_shape=(1, 28, 28), num_classes=5), (1, 28, 28))
    assert feats.shape == (2, 2048) and logits.shape == (2, 5)


def test_vgg11_is_jits_vgg_without_batch_norm_and_a_1000_to_c_head():
    model = build_model("vgg11", seed=0, input_shape=(3, 32, 32), num_classes=7)
    modules = list(model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert (
        sum(isinstance(m, nn.Conv2d) for m in modules) == 8 and sum(isinstance(m, nn.MaxPool2d) for m in modules) == 5
    )
    assert [m.p for m in modules if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert model.features.classifier[-1].out_features == 1000 and model.head.in_features == 1000
    feats, logits = run(model, (3, 32, 32))
    assert feats.shape == (2, 1000) and logits.shape == (2, 7)


def test_vgg16_bn_classifier_variants():
    model = build_model("vgg16_bn", seed=0, input_shape=(1, 32, 32), num_classes=4)
    modules = list(model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in modules) == 13 and any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert model.features.convs[0].in_channels == 1
    feats, logits = run(model, (1, 32, 32))
    assert feats.shape == (2, 512) and logits.shape == (2, 4)
    wide = build_model("vgg16_bn", seed=0, input_shape=(3, 48, 40), num_classes=4, classifier="imagenet")
    feats, logits = run(wide, (3, 48, 40))
    assert feats.shape == (2, 4096) and logits.shape == (2, 4)


def test_vit_b_16_gives_the_cls_token_of_a_224px_resize():
    model = build_model("vit_b_16", seed=0, input_shape=(3, 32, 32), num_classes=10)
    feats, logits = run(model, (3, 32, 32))
    assert feats.shape == (2, 768) and logits.shape == (2, 10)
    assert sum(p.numel() for p in model.features.parameters()) == 85_798_656  # torchvision ViT-B/16 minus its head
    resize = ResizeToRGB(224)
    grey = torch.rand(2, 1, 28, 28)
    out = resize(grey)
    assert out.shape == (2, 3, 224, 224) and torch.equal(out[:, 0], out[:, 2])
    expected = nn.functional.interpolate(grey, size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, 1:2], expected)
    same = torch.rand(1, 3, 224, 224)
    assert torch.equal(resize(same), same)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet18", {"input_shape": (3, 32)}, r"resnet18: input_shape=\(3, 32\) must be \(channels, height, width\)"),
        ("resnet18", {"input_shape": (3, 0, 32)}, r"must be \(channels, height, width\) of positive integers"),
        ("vgg11", {"input_shape": (3, 16, 16)}, r"vgg11: .* at least 32x32 px \(VGG halves .* 5 times.*got 16x16"),
        ("vgg16_bn", {"input_shape": (1, 28, 28)}, r"vgg16_bn: .* at least 32x32 px"),
        (
            "resnet50",
            {"input_shape": (3, 16, 16), "stem": "imagenet"},
            r"resnet50: .* at least 32x32 px \(the ImageNet",
        ),
        ("resnet18", {"stem": "cifar10"}, r"resnet18: stem='cifar10' is not one of 'cifar', 'imagenet'"),
        ("vgg16_bn", {"classifier": "big"}, r"classifier='big' is not one of 'cifar', 'imagenet'"),
        ("resnet18", {"num_classes": 1}, r"resnet18: num_classes=1 must be an integer >= 2"),
        ("vgg11", {"num_classes": 2.5}, r"num_classes=2.5 must be an integer >= 2"),
        (
            "vit_b_16",
            {"input_shape": (2, 32, 32)},
            r"vit_b_16: input_shape=\(2, 32, 32\) has 2 channels; allowed: 1, 3",
        ),
    ],
)
def test_bad_input_is_an_early_clear_error(monkeypatch, name, kwargs, message):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # building would fail with ImportError: we must not get there
    args = {"input_shape": (3, 32, 32), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model(name, seed=0, **args)


def test_without_torchvision_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'unlearnkit\[vision\]'"):
        build_model("vgg11", seed=0, input_shape=(3, 32, 32), num_classes=10)
