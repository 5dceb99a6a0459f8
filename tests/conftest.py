"""Shared test set-up: a private model cache per test session, one intra-op thread (tiny models run faster on one
thread than on two, and CI has two cores)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty UNLEARNKIT_HOME for one test."""
    root = tmp_path / "home"
    monkeypatch.setenv("UNLEARNKIT_HOME", str(root))
    return root
