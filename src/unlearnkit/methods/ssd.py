"""SSD `ssd` and LFSSD `lfssd`: selective synaptic dampening (Foster et al., AAAI-24, arXiv 2308.07707; the
label-free LFSSD, Foster et al., arXiv 2402.19308; specs/vision.md §4). Retrain-free and post hoc, no optimiser:

    I_D  = importance over the full training set D = D_r ∪ D_f        (model.eval(); cached per model and D)
    I_Df = importance over D_f
    select i where I_Df[i] > α·I_D[i];   θ_i ← θ_i·min(λ·I_D[i]/I_Df[i], 1)        (dampen only, never grow)

Importance (formulas in _importance.py): "sample" (default) is the per-example diagonal Fisher mean_z (∂ℓ(z)/∂θ)²
(vmap over examples; a closed form for all-Linear models; `importance_method_` says which);
"batch" (= faithful=True, the reference code) is the mean over mini-batches of (∂ CE(B)/∂θ)², which depends on the
batch size (SSD repo: 64 for full- and sub-class, 128 for random; D's batches are D_r then D_f, unshuffled).
LFSSD (label_free=True) uses ℓ = ‖f(x)‖₂² (no labels) and |∂ℓ/∂θ| in place of CE and its square.

λ / α of the papers (ResNet18 | ViT): full-class CIFAR-100/20 1/10 | 1/5; sub-class CIFAR-20 1/10 | 1/25; random
CIFAR-10 1/10 | 1/10; PinsFaceRecognition λ=0.1, α=50 (a code comment). As run from the JiT repo: full-class 1/1;
random VGG 4/10, ViT 1/3.5; sub-class VGG 6/5, ViT 1/10. α "can be quite sensitive" (SSD issue #3): re-tune it for
a new base model. With the per-sample importance, I_Df/I_D <= |D|/|D_f| (D contains D_f), so α must stay below
|D|/|D_f| (about 10 for one class of ten: digits class forgetting uses α=5; a warning says when nothing can be chosen).

Cache: with data.train_hash set and cache_importances=True, I_D is a model-cache entry keyed by the model's weights,
train_hash, the importance kind and label_free (for "batch" also the batch size, the order of D and the number of
processes), so a second run on the same original model and data skips the D pass. Multi-process: each process takes
every world-th batch and the sums and counts are all-reduced (on one process no Accelerator is built).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from ..config import param, validate
from ._base import check_data, register_method, variant
from ._importance import dampen, importance_sums, reduce_mean
from ._influence import iter_batches
from ._loop import default_accelerator

PAPER = "Foster et al., AAAI-24, arXiv 2308.07707 (SSD: selective synaptic dampening)"


def process_accelerator(accelerator: Any = None) -> Any:
    """The accelerator to reduce with: the given one, the process-wide one in a multi-process run, else None (one
    process: a reduction is the identity, and building an Accelerator costs about 0.1 s)."""
    if accelerator is not None:
        return accelerator
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return default_accelerator() if distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _all_processes(acc: Any, hit: bool) -> bool:
    """True only if every process had a cache hit (the D pass is collective: all build or none)."""
    if acc is None or acc.num_processes == 1:
        return hit
    misses = acc.reduce(torch.tensor([0.0 if hit else 1.0], device=acc.device), reduction="sum")
    return misses.item() == 0


def _leaves(batch: Any) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for key in sorted(batch):
            yield from _leaves(batch[key])
    elif isinstance(batch, tuple | list):
        for item in batch:
            yield from _leaves(item)


def digest(named: Iterable[tuple[str, Tensor]]) -> str:
    """SHA-256 of (name, tensor) pairs: names, dtypes, shapes and bytes (e.g. a model's state dict)."""
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_digest(dataset: Dataset, batch_size: int = 1024) -> str:
    """SHA-256 of a data set's tensors in order (the batches of D, hence its batch importance, depend on it)."""
    batches = iter_batches(dataset, batch_size, torch.device("cpu"))
    return digest((str(k), t) for k, batch in enumerate(batches) for t in _leaves(batch))


@register_method("ssd", paper=PAPER, tasks=("classifier",))
@dataclass
class SSD:
    """Selective synaptic dampening: shrink the weights far more important to the forget set than to the training
    set, by the ratio of their importances."""

    uses: ClassVar[tuple[str, ...]] = ("forget", "retain")  # D = D_r ∪ D_f
    dampening_constant: float = param(1.0, gt=0, help="λ: a selected θ_i is multiplied by min(λ·I_D/I_Df, 1)")
    selection_weighting: float = param(10.0, gt=0, help="α: θ_i is selected where I_Df > α·I_D")
    importance: Literal["sample", "batch"] = param(
        "sample", help="sample = per-example diagonal Fisher; batch = squared mini-batch gradients (the reference)")
    faithful: bool = param(False, help="reproduce the reference code: importance='batch'")
    batch_size: int = param(64, gt=0, help="importance batch size: the mini-batch of 'batch' (64; the SSD repo uses "
                                           "128 for random forgetting), memory only for 'sample'")
    label_free: bool = param(False, help="LFSSD: loss ‖f(x)‖₂² instead of CE, |∇| instead of ∇² (no labels)")
    cache_importances: bool = param(True, help="cache I_D in the model cache when data.train_hash is set")
    seed: int = param(0, help="unused: SSD is deterministic (every method takes a seed)")

    @property
    def importance_kind(self) -> Literal["sample", "batch"]:
        return "batch" if self.faithful else self.importance

    def cache_spec(self, model: nn.Module, data: Any, world: int) -> dict[str, Any] | None:
        """What determines I_D (None: not cached)."""
        train_hash = getattr(data, "train_hash", None)
        if not (self.cache_importances and train_hash):
            return None
        from .. import __version__

        spec: dict[str, Any] = {
            "kind": "ssd_importance", "unlearnkit": __version__, "train_hash": train_hash,
            "model": digest(model.state_dict().items()), "importance": self.importance_kind,
            "label_free": self.label_free, "params": [n for n, p in model.named_parameters() if p.requires_grad]}
        if self.importance_kind == "batch":  # the batches of D (D_r then D_f) depend on the split and the world
            spec.update(batch_size=self.batch_size, world=world,
                        order=dataset_digest(ConcatDataset([data.retain, data.forget])))
        return spec

    def _check_selectable(self, data: Any, kind: str) -> None:
        """Per-sample importances have I_Df/I_D <= |D|/|D_f| (D contains D_f): warn when α leaves nothing to select."""
        bound = (len(data.forget) + len(data.retain)) / len(data.forget)
        if kind == "sample" and self.selection_weighting >= bound:
            warnings.warn(f"method.{self.registry_name}: selection_weighting={self.selection_weighting} >= |D|/|D_f| "
                          f"= {bound:.2f}; with the per-sample importance I_Df/I_D <= |D|/|D_f|, so no parameter is "
                          f"selected and the model is unchanged: use selection_weighting < {bound:.2f} (e.g. half of "
                          "it)", UserWarning, stacklevel=3)

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        start = time.perf_counter()
        acc = process_accelerator(accelerator)
        rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
        kind = self.importance_kind
        self._check_selectable(data, kind)
        common = {"kind": kind, "label_free": self.label_free, "batch_size": self.batch_size, "rank": rank,
                  "world": world}
        forget = importance_sums(model, task, data.forget, **common)
        self.importance_method_ = forget.method  # linear (closed form), vmap or batch
        imp_f = reduce_mean(forget.sums, forget.count, acc)  # I_Df {name: [*shape]}

        def importance_of_d() -> dict[str, torch.Tensor]:
            if kind == "sample":  # a mean over examples: D_f's sums are reused
                retain = importance_sums(model, task, data.retain, **common)
                both = {n: forget.sums[n] + retain.sums[n] for n in forget.sums}
                return reduce_mean(both, forget.count + retain.count, acc)
            d = importance_sums(model, task, ConcatDataset([data.retain, data.forget]), **common)
            return reduce_mean(d.sums, d.count, acc)

        spec = self.cache_spec(model, data, world)
        self.importance_cached_, self.importance_key_ = False, None
        if spec is None:
            imp_d = importance_of_d()
        else:
            from ..cache import ModelCache, spec_key

            self.importance_key_ = spec_key(spec)
            imp_d, _meta, self.importance_cached_ = ModelCache().get_or_build_tensors(
                self.importance_key_, importance_of_d, spec=spec, agree=lambda hit: _all_processes(acc, hit))
        self.selected_, self.total_ = dampen(model, imp_d, imp_f, alpha=self.selection_weighting,
                                             lam=self.dampening_constant)
        self.selected_fraction_ = self.selected_ / max(self.total_, 1)
        self.seconds_ = time.perf_counter() - start
        return model


LFSSD = register_method("lfssd", paper="Foster et al., arXiv 2402.19308 (LFSSD: label-free SSD)",
                        tasks=("classifier",))(variant(
    SSD, "LFSSD", "Label-free SSD: importances of ‖f(x)‖₂² accumulated as |∇| (no labels).", label_free=True))
# Conformance toy (memorized wrong labels): without labels, I_Df/I_D stays below 3 there, so α=10 selects nothing.
LFSSD.toy_overrides = {"selection_weighting": 1.5}
