"""MIMU's hooked target models (shared/specs/mimu.md §2–§3): the builders' sizes, the head contract and its errors,
and the batched capture of the masked layer's activations and per-sample gradients against a one-sample-at-a-time
autograd loop and against _mimu_graph.weight_gradient, without side effects on the model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit._registry import MODELS
from unlearnkit.methods._mimu_capture import Capture, capture_layer, check_mimu_head
from unlearnkit.methods._mimu_graph import MaskGCN, likelihood_term, node_features, weight_gradient
from unlearnkit.models import build_model

TINY_MLP = {"input_shape": (5,), "num_classes": 3, "hidden": (8, 6)}    # masked features.fc2: W [6, 8]
TINY_RESNET = {"input_shape": (3, 32, 32), "num_classes": 5, "width": 12}  # 7x7 stem: 32 px -> 1x1 in layer4


def batch(shape, num_classes, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, *shape, generator=g, dtype=torch.float64), torch.randint(num_classes, (size,), generator=g)


def tiny(name, seed=0):
    """A float64 model with non-trivial BatchNorm statistics (so that evaluation and training mode differ)."""
    model = build_model(name, seed=seed, **(TINY_MLP if name == "mlp_mimu" else TINY_RESNET)).double()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model


def autograd_loop(model, layer, x, y):
    """The reference: one sample at a time in eval mode, hooks keeping the masked layer's input and pre-activation
    output and the head's input; autograd gives ∂L/∂W and ∂L/∂(W a). Returns stacked (inp, out, pre, dpre, grad)."""
    model = copy.deepcopy(model).eval()
    masked, head = model.get_submodule(layer), model.head
    rows, got = [], {}
    masked.register_forward_hook(lambda _m, a, o: got.update(inp=a[0], pre=o))   # on the copy only
    head.register_forward_hook(lambda _m, a, o: got.update(out=a[0]))
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grad, dpre = torch.autograd.grad(loss, [masked.weight, got["pre"]])
        rows.append((got["inp"][0], got["out"][0], got["pre"][0], dpre[0], grad))
    return [torch.stack(t).detach() for t in zip(*rows, strict=True)]


# --- builders -----------------------------------------------------------------------------------------------------

def test_builders_are_registered_classifiers_with_the_spec_sizes_and_seeded():
    assert {"mlp_mimu", "resnet18_mimu"} <= set(MODELS.list(task="classifier"))
    mlp = build_model("mlp_mimu", seed=0, input_shape=(1, 28, 28), num_classes=10)
    assert check_mimu_head(mlp) == ("features.fc2", "head")
    assert [tuple(p.shape) for p in mlp.parameters()] == [(128, 784), (64, 128), (10, 64)]   # all bias-free
    assert mlp.features.fc2.weight.numel() == 8_192 and isinstance(mlp.features[-1], nn.ReLU)

    resnet = build_model("resnet18_mimu", seed=0, input_shape=(3, 32, 32), num_classes=10)
    assert check_mimu_head(resnet) == ("features.fc", "head")
    assert resnet.features.fc.weight.shape == (128, 512) and resnet.features.fc.weight.numel() == 65_536
    assert resnet.head.weight.shape == (10, 128) and resnet.head.bias is None and resnet.features.fc.bias is None
    conv1 = resnet.features.conv1    # the reference's 7x7 stride-2 stem and max-pool, also at 32 px
    assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2)) and isinstance(resnet.features.maxpool, nn.MaxPool2d)
    assert sum(p.numel() for p in resnet.parameters()) == 11_176_512 + 512 * 128 + 128 * 10   # torchvision's minus fc
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = resnet.eval().features[:-1](x)                  # [2, 512]
        assert torch.equal(resnet(x), resnet.head(resnet.features.fc(pooled)))   # no nonlinearity between the two

    for name, kwargs in (("mlp_mimu", TINY_MLP), ("resnet18_mimu", TINY_RESNET)):
        a, b, c = (build_model(name, seed=s, **kwargs).state_dict() for s in (3, 3, 4))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["head.weight"], c["head.weight"])


def test_builders_reject_bad_sizes():
    with pytest.raises(ValueError, match=r"mlp_mimu: hidden=\(\) must be one or more positive widths"):
        build_model("mlp_mimu", seed=0, input_shape=(5,), num_classes=3, hidden=())
    with pytest.raises(ValueError, match=r"mlp_mimu: num_classes=1 must be an integer >= 2"):
        build_model("mlp_mimu", seed=0, input_shape=(5,), num_classes=1)
    with pytest.raises(ValueError, match=r"resnet18_mimu: width=0 must be a positive integer"):
        build_model("resnet18_mimu", seed=0, input_shape=(3, 32, 32), num_classes=3, width=0)


# --- the contract -------------------------------------------------------------------------------------------------

def _conv_then_head():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False))


def _mlp_mimu_with_a_biased_head():
    model = build_model("mlp_mimu", seed=0, **TINY_MLP)
    model.head = nn.Linear(6, 3)
    return model


CONTRACT_ERRORS = {
    "mlp": (lambda: build_model("mlp", seed=0, input_shape=(5,), num_classes=3),
            r"^SmallClassifier does not fit MIMU's head contract \(.*\): its last layer 'head' \(Linear\) has a bias; "
            r"the layer before the head 'features.3' \(Linear\) has a bias$"),
    "cnn": (lambda: build_model("cnn", seed=0, input_shape=(1, 8, 8), num_classes=3),
            r"'head' \(Linear\) has a bias; the layer before the head 'features.6' \(Linear\) has a bias$"),
    "resnet18": (lambda: build_model("resnet18", seed=0, input_shape=(3, 32, 32), num_classes=3),
                 r"'head' \(Linear\) has a bias; found BatchNorm2d 'features.layer4.1.bn2' before the head, not an "
                 r"nn.Linear$"),
    "conv_before_head": (_conv_then_head,
                         r"^Sequential does not fit .*: found Conv2d '0' before the head, not an nn.Linear$"),
    "biased_head": (_mlp_mimu_with_a_biased_head, r": its last layer 'head' \(Linear\) has a bias$"),
    "widths": (lambda: nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(3, 2, bias=False)),
               r": '0' gives 4 features but the head '1' takes 3$"),
    "one_by_one": (lambda: nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 2, bias=False)),
                   r": '0' is a 1x1 layer: MIMU's graph needs at least 2 weights$"),
    "one_layer": (lambda: nn.Linear(3, 2, bias=False),
                  r"^Linear does not fit .*: it has 1 layer\(s\) with parameters$"),
}


@pytest.mark.parametrize("case", list(CONTRACT_ERRORS))
def test_models_outside_the_contract_get_a_clear_error(case):
    build, message = CONTRACT_ERRORS[case]
    model = build()
    with pytest.raises(ValueError, match=message):
        check_mimu_head(model)
    with pytest.raises(ValueError, match=message):    # before any forward pass
        capture_layer(model, "head", torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


# --- the capture --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp_mimu", "resnet18_mimu"])
def test_capture_matches_a_per_sample_autograd_loop_and_weight_gradient(name):
    model = tiny(name)
    layer, _ = check_mimu_head(model)
    x, y = batch(TINY_MLP["input_shape"] if name == "mlp_mimu" else TINY_RESNET["input_shape"], 3)
    got = capture_layer(model.train(), layer, x, y)   # train mode on purpose: the capture must run in eval mode
    inp, out, pre, dpre, grad = autograd_loop(model, layer, x, y)
    m, n = model.get_submodule(layer).weight.shape
    assert isinstance(got, Capture)
    assert got.inp.shape == (5, n) and got.out.shape == (5, m) and got.grad.shape == (5, m, n)
    assert got.grad.dtype == torch.float64 and not got.grad.requires_grad and not got.out.requires_grad
    torch.testing.assert_close(got.inp, inp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.out, out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.grad, grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weight_gradient(dpre, got.inp), got.grad, rtol=1e-10, atol=1e-12)   # (∂L/∂o)·aᵀ
    assert got.grad.abs().sum() > 0 and not torch.allclose(got.grad[0], got.grad[1])   # per sample, not a mean
    if name == "mlp_mimu":    # the output activation is read after the ReLU (spec §2)
        torch.testing.assert_close(got.out, pre.clamp(min=0), rtol=1e-10, atol=1e-12)
        assert (pre < 0).any() and (got.out == 0).any()
    else:                     # nothing between the masked layer and the head
        torch.testing.assert_close(got.out, pre, rtol=1e-10, atol=1e-12)


def test_capture_leaves_mode_grads_and_buffers_untouched():
    model = tiny("resnet18_mimu").train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    model.features.conv1.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x, y = batch(TINY_RESNET["input_shape"], 5, size=3)
    capture_layer(model, "features.fc", x, y)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert not model.features.conv1.weight.requires_grad and model.features.fc.weight.requires_grad
    after = model.state_dict()     # weights and BatchNorm running statistics (eval mode: no update)
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.eval()
    capture_layer(model, "features.fc", x, y)
    assert not model.training and not any(m.training for m in model.modules())


def test_a_custom_per_sample_loss_scales_the_gradient():
    model = tiny("mlp_mimu")
    x, y = batch((5,), 3)
    ce = capture_layer(model, "features.fc2", x, y)
    doubled = capture_layer(model, "features.fc2", x, y, loss=lambda z, t: 2 * F.cross_entropy(z, t, reduction="none"))
    torch.testing.assert_close(doubled.grad, 2 * ce.grad, rtol=1e-12, atol=0)
    assert torch.equal(doubled.inp, ce.inp) and torch.equal(doubled.out, ce.out)


def test_the_capture_feeds_node_features_and_the_gcn():
    model = tiny("mlp_mimu").float()
    x, y = (t.float() if t.is_floating_point() else t for t in batch((5,), 3))
    cap = capture_layer(model, "features.fc2", x, y)
    weight = model.features.fc2.weight.detach()              # W [6, 8]
    feats = node_features(cap.inp, cap.out, weight, cap.grad)
    assert feats.shape == (5, 6, 8, 4) and torch.isfinite(feats).all()
    # a_j on every row, o_i on every column, W and ∂L/∂W at [i, j]: z-scored per sample over the 48 nodes
    assert torch.equal(feats[:, 0, :, 0], feats[:, 5, :, 0]) and torch.equal(feats[:, :, 0, 1], feats[:, :, 7, 1])
    z = (cap.grad - cap.grad.mean((1, 2), keepdim=True)) / (cap.grad.std((1, 2), keepdim=True) + 1e-8)
    torch.testing.assert_close(feats[..., 3], z)
    assert MaskGCN()(feats).shape == (5, 48)
    # the same masked weight, by parameter name, in the likelihood term: an all-ones mask is the plain CE
    ones = torch.ones(5, 48)
    torch.testing.assert_close(likelihood_term(model.eval(), "features.fc2.weight", ones, x, y),
                               F.cross_entropy(model(x), y, reduction="none"))


class _LogSoftmaxOut(nn.Module):
    """Fits the static contract, but the head's output is not what the model returns."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.head(self.fc(x)).log_softmax(-1)


class _MaskedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(5, 5, bias=False), nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.head(self.fc(self.fc(x)))


def test_bad_inputs_are_rejected_with_clear_errors():
    model = tiny("mlp_mimu").float()
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"layer_name='head' is not the masked layer of SmallClassifier: .* here "
                                         r"'features.fc2'"):
        capture_layer(model, "head", x, y)
    with pytest.raises(ValueError, match=r"labels y must be a 1-D integer tensor \[B\]; got dtype torch.float32"):
        capture_layer(model, "features.fc2", x, y.float())
    with pytest.raises(ValueError, match=r"labels y must be a 1-D integer tensor \[B\]; got .* shape \(4, 1\)"):
        capture_layer(model, "features.fc2", x, y[:, None])
    with pytest.raises(ValueError, match=r"x \(3, 5\) and y \(4,\) must hold the same B >= 1 samples"):
        capture_layer(model, "features.fc2", x[:3], y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) for the 3 classes of SmallClassifier; got "
                                         r"values in \[0, 3\]"):
        capture_layer(model, "features.fc2", x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"unknown loss 'mse'; allowed: 'ce' or a callable"):
        capture_layer(model, "features.fc2", x, y, loss="mse")
    with pytest.raises(ValueError, match=r"_LogSoftmaxOut: the output of its last layer 'head' is not the model's "
                                         r"logits"):
        capture_layer(_LogSoftmaxOut(), "fc", x, y)
    with pytest.raises(ValueError, match=r"'fc' and the head 'head' must each run once per forward; they ran 2 and "
                                         r"1 time"):
        capture_layer(_MaskedTwice(), "fc", x, y)
