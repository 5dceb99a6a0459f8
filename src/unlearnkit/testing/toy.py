"""Tiny real models and data for tests and the conformance suite (CPU, seconds).

The forget sets are *memorized*: the classifier's forget examples carry labels that contradict their cluster, the
language model's forget answers are random tokens. The original model fits them only by memorizing, so anything
that unlearns them (or retrains without them) raises their loss.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ..data import UnlearnData
from ..methods._loop import LoopParams
from ..methods.retrain import fit
from ..models import build_model
from ..tasks import get_task

N_CLASSES, N_FEATURES = 4, 8


def tiny_classification_data(seed: int = 0, n_per_class: int = 40, n_forget: int = 12,
                             scenario: str = "random") -> UnlearnData:
    """Four Gaussian clusters in 8-D. scenario="random": the forget set is `n_forget` training points with a wrong
    label; scenario="class": the forget set is every training point of class 0 (forget_classes=(0,))."""
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(N_CLASSES, N_FEATURES, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(N_CLASSES).repeat_interleave(n)
        return centers[y] + torch.randn(len(y), N_FEATURES, generator=g), y

    x, y = draw(n_per_class)
    x_test, y_test = draw(n_per_class // 2)
    order = torch.randperm(len(y), generator=g)
    if scenario == "class":
        forget, retain = order[y[order] == 0], order[y[order] != 0]
        return UnlearnData(forget=TensorDataset(x[forget], y[forget]), retain=TensorDataset(x[retain], y[retain]),
                           test=TensorDataset(x_test, y_test), num_classes=N_CLASSES, forget_classes=(0,),
                           test_forget=(y_test == 0).nonzero().flatten().numpy())
    if scenario != "random":
        raise ValueError(f"scenario='{scenario}': must be random or class")
    forget, retain = order[:n_forget], order[n_forget:]
    wrong = (y[forget] + 1 + torch.randint(0, N_CLASSES - 1, (n_forget,), generator=g)) % N_CLASSES
    return UnlearnData(forget=TensorDataset(x[forget], wrong), retain=TensorDataset(x[retain], y[retain]),
                       test=TensorDataset(x_test, y_test), num_classes=N_CLASSES)


def tiny_classifier(seed: int = 0, name: str = "mlp", **sizes) -> nn.Module:
    """A registered classifier on the toy data: by default the `mlp` at toy size, 8 -> 32 -> 4; another builder
    `name` with its `sizes` (e.g. name="mlp_mimu", hidden=(32, 16))."""
    sizes = sizes or ({"hidden": (32,)} if name == "mlp" else {})
    return build_model(name, seed=seed, input_shape=(N_FEATURES,), num_classes=N_CLASSES, **sizes)


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, d/H]
        h = h + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return h + self.mlp(self.ln2(h))


class TinyCausalLM(nn.Module):
    """A two-layer decoder (token + position embeddings, pre-norm blocks, LM head): input_ids [B, T] -> [B, T, V]."""

    def __init__(self, vocab_size: int = 24, d_model: int = 32, n_layer: int = 2, n_head: int = 2,
                 max_len: int = 16) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab_size, d_model), nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
        self.norm, self.lm_head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))


class DictDataset(Dataset):
    """Rows of a dict of equally long tensors; the default collate stacks them back into a dict batch."""

    def __init__(self, **columns: torch.Tensor) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def tiny_lm_data(seed: int = 0, n_retain: int = 32, n_forget: int = 8, prompt_len: int = 4,
                 answer_len: int = 6, vocab_size: int = 24) -> UnlearnData:
    """Question/answer token sequences; loss on the answer only (prompt labels are −100). Retain answers follow a
    learnable rule (each answer token is its prompt token + 1, cyclic); forget answers are random tokens. Each forget
    example also carries an "I don't know" alternate for preference methods (DPO): `alt_input_ids`,
    `alt_attention_mask`, `alt_labels` = the same prompt followed by one fixed refusal pattern (V−1, V−2, ...)."""
    g = torch.Generator().manual_seed(seed)

    def encode(prompt: torch.Tensor, answer: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
        ids = torch.cat([prompt, answer], dim=1)
        labels = ids.clone()
        labels[:, :prompt_len] = -100
        return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": torch.ones_like(ids), f"{prefix}labels": labels}

    def make(n: int, random_answer: bool) -> DictDataset:
        prompt = torch.randint(0, vocab_size, (n, prompt_len), generator=g)
        if random_answer:
            answer = torch.randint(0, vocab_size, (n, answer_len), generator=g)
            idk = ((vocab_size - 1 - torch.arange(answer_len)) % vocab_size).expand(n, -1)  # no generator draw
            return DictDataset(**encode(prompt, answer), **encode(prompt, idk, prefix="alt_"))
        answer = (prompt.repeat(1, answer_len // prompt_len + 1)[:, :answer_len] + 1) % vocab_size
        return DictDataset(**encode(prompt, answer))

    return UnlearnData(forget=make(n_forget, True), retain=make(n_retain, False), test=make(n_forget, False))


def tiny_causal_lm(seed: int = 0) -> TinyCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCausalLM()


class _Both(Dataset):
    """a then b; dict items keep only the keys both have (the forget set's alternates are not training data)."""

    def __init__(self, a: Dataset, b: Dataset) -> None:
        self.a, self.b = a, b
        first_a, first_b = a[0], b[0]
        self.keys = [k for k in first_a if k in first_b] if isinstance(first_a, dict) else None

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: int):
        item = self.a[i] if i < len(self.a) else self.b[i - len(self.a)]
        return item if self.keys is None else {k: item[k] for k in self.keys}


@lru_cache(maxsize=8)
def _memorized(kind: str, seed: int, scenario: str, model_name: str = "mlp",
               sizes: tuple[tuple[str, object], ...] = ()) -> tuple[nn.Module, UnlearnData]:
    if kind == "classifier":
        model = tiny_classifier(seed, model_name, **dict(sizes))
        data = tiny_classification_data(seed, scenario=scenario)
        recipe = LoopParams(lr=0.01, epochs=150, batch_size=32, optimizer="adam", weight_decay=0.0, seed=seed)
    elif scenario != "random":
        raise ValueError(f"scenario='{scenario}': the toy causal LM has only the random scenario")
    else:
        model, data = tiny_causal_lm(seed), tiny_lm_data(seed)
        recipe = LoopParams(lr=0.01, epochs=120, batch_size=16, optimizer="adam", weight_decay=0.0, seed=seed)
    fit(model, _Both(data.forget, data.retain), get_task(kind), recipe, desc=f"toy {kind}", progress=False)
    return model.eval(), data


def memorized(kind: str = "classifier", seed: int = 0, scenario: str = "random",
              model: tuple[str, dict] | None = None) -> tuple[nn.Module, UnlearnData]:
    """(an original model trained on its forget set, the data) for task kind `kind`; a fresh copy each call.
    scenario="random" (memorized wrong labels) or "class" (classifier only: forget every example of class 0).
    model: (registered classifier builder, its toy sizes) in place of the toy `mlp`, e.g. ("mlp_mimu",
    {"hidden": (32, 16)}) for a method that needs a particular architecture (classifier only)."""
    if model is not None and kind != "classifier":
        raise ValueError(f"model={model!r}: only the classifier toy takes another model")
    name, sizes = model or ("mlp", {})
    original, data = _memorized(kind, seed, scenario, name, tuple(sorted(sizes.items())))
    return copy.deepcopy(original), data
