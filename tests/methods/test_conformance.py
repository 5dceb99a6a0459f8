"""Every registered method passes the conformance suite; the suite itself can fail."""

from dataclasses import dataclass

import pytest
import torch

from unlearnkit._registry import METHODS
from unlearnkit.testing import check_method


@pytest.mark.parametrize("name", METHODS.list())
def test_registered_method_conforms(name):
    results = check_method(name)
    assert {r.task for r in results} == set(METHODS.get(name).tags["tasks"])
    assert all(r.forget_loss_after > r.forget_loss_before for r in results)


@dataclass
class _NoOp:
    seed: int = 0
    capabilities = {"tasks": ("classifier",)}

    def unlearn(self, model, data, task, accelerator=None):
        return model


@dataclass
class _Mutator(_NoOp):
    lr: float = 0.1

    def unlearn(self, model, data, task, accelerator=None):
        self.lr *= 2
        with torch.no_grad():
            model.head.weight.mul_(-1)
        return model


@dataclass
class _Random(_NoOp):
    def unlearn(self, model, data, task, accelerator=None):
        with torch.no_grad():
            model.head.weight.add_(10 * torch.randn_like(model.head.weight))
        return model


@dataclass
class _Grower(_NoOp):
    def unlearn(self, model, data, task, accelerator=None):
        return torch.nn.Sequential(model, torch.nn.Linear(4, 4))


@pytest.mark.parametrize("method, message", [
    (_NoOp(), "the forget loss did not rise"),
    (_Mutator(), r"unlearn\(\) mutated its hyperparameters"),
    (_Random(), "the same seed gave different weights"),
    (_Grower(), "returned a Sequential, not a SmallClassifier"),
])
def test_conformance_suite_catches_broken_methods(method, message):
    with pytest.raises(AssertionError, match=message):
        check_method(method)
