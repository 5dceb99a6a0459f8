"""MIMU `mimu`: minimally invasive machine unlearning (zxjrsch/machine-unlearning, layer6ai-labs/MIMU; no paper
found; spec: shared/specs/mimu.md). One-shot: it zeroes κ weights of one layer and trains nothing of the classifier.

    W [m, n]  the bias-free Linear feeding the bias-free head (`check_mimu_head`); its N = m·n weights are the
              nodes of the m×n rook's graph, with per-sample features [a_j, o_i, W_ij, ∂L/∂W_ij] (§3)
    1. graph_batches  features of training samples (x, y), batched: one forward + backward per batch
    2. train_gcn      a GCN gives logits z [N]; trained (AdamW, `steps` batches) on
                      −log p(y | x; W ⊙ S_K(z)) + Σ S_K(z)·(log softmax(z) − log π)     (§5, term 1 NOT detached)
    3. class_logits   z̄_c = mean GCN logits over n_representatives training samples of class c    [C, N]
    4. forget_mask    zero the κ weights the forget class needs most and the other classes least (§6; _mimu_masks)
    5. apply_mask     W ← W ⊙ mask; no fine-tuning follows

The stages are public functions (a pipeline caches each one); `MIMU.unlearn` runs them in order. The graph samples
and the representatives are TRAINING samples (data.retain ∪ data.forget), never the test split (§10 M10). Every
input is checked by `_resolve` before any capture or GCN step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from ..config import param, validate
from ..data.arrays import ImageSubset
from ..tasks._hooks import eval_mode
from ._base import check_data, register_method
from ._loop import default_accelerator
from ._mimu_capture import Capture, capture_layer
from ._mimu_graph import PRIORS, SAMPLERS, MaskGCN, log_prior, mimu_loss, node_features, relaxed_topk
from ._mimu_masks import Target, _resolve, apply_mask, forget_mask, pure_class_mask

__all__ = ["MIMU", "apply_mask", "class_logits", "forget_mask", "graph_batches", "load_samples", "pure_class_mask",
           "representatives", "train_gcn"]

PAPER = "MIMU, zxjrsch/machine-unlearning (no paper; shared/specs/mimu.md)"
TOY_MODEL: tuple[str, dict[str, Any]] = ("mlp_mimu", {"hidden": (32, 16)})   # the conformance toy: W [16, 32]


# --- stages -------------------------------------------------------------------------------------------------------

def _features(model: nn.Module, layer: str, x: Tensor, y: Tensor) -> tuple[Tensor, Capture]:
    """(node features [B, m, n, 4], the capture) of one batch: one batched forward + backward in eval mode."""
    capture = capture_layer(model, layer, x, y)
    weight = model.get_submodule(layer).weight.detach()
    return node_features(capture.inp, capture.out, weight, capture.grad), capture


def graph_batches(model: nn.Module, layer: str, x: Tensor, y: Tensor, *, batch_size: int) -> Iterator[Tensor]:
    """The node features [B, m, n, 4] of the samples (x [S, ...], y [S]) in order, `batch_size` at a time (the last
    batch may be smaller), on the model's device: per-sample gradients from one backward per batch (§3)."""
    _resolve(model, masked_layer=layer)              # checked now, not at the first batch
    _check_samples(x, y, batch_size)
    return (_features(model, layer, x[start:start + batch_size], y[start:start + batch_size])[0]
            for start in range(0, len(y), batch_size))


def _check_samples(x: Tensor, y: Tensor, batch_size: int) -> None:
    if len(y) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must hold the same S >= 1 samples; got {len(x)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")


def train_gcn(model: nn.Module, layer: str, x: Tensor, y: Tensor, *, top_k: int | float, steps: int = 32,
              batch_size: int = 64, lr: float = 1e-2, weight_decay: float = 5e-4, hidden: int = 32, rounds: int = 3,
              activation: str = "sigmoid", prior: str = "weight", sampler: str = "relaxed_topk",
              temperature: float | None = None, straight_through: bool = False,
              seed: int = 0) -> tuple[MaskGCN, list[float]]:
    """Train one GCN for one K (§5) on the graph samples (x [S, ...], y [S]): TRAINING samples (§3, M10).

    Each of `steps` AdamW steps draws `batch_size` distinct samples (all S when fewer) from a torch.Generator seeded
    with `seed`, captures their features, and minimises mimu_loss with m = relaxed_topk(z, K): the likelihood term
    runs the classifier with W ⊙ m through functional_call, so its gradient reaches the GCN (§10 M1). The GCN is
    initialised from `seed`; the classifier runs in eval mode and is not changed. temperature None = the sampler's
    default (τ 0.1 for relaxed_topk, T 1 for gumbel). Returns (the GCN in eval mode on the model's device, the loss
    of each step)."""
    target = _resolve(model, masked_layer=layer, top_k=top_k)
    _check_samples(x, y, batch_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} must be an int >= 0")
    for name, value, allowed in (("sampler", sampler, SAMPLERS), ("prior", prior, PRIORS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    weight = model.get_submodule(target.layer).weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gcn = MaskGCN(hidden=hidden, rounds=rounds, activation=activation)
    gcn.to(device=weight.device, dtype=weight.dtype)
    log_pi = log_prior(weight, kind=prior) if prior == "weight" else None   # [N]; "gradient": per sample below
    optimizer = torch.optim.AdamW(gcn.parameters(), lr=lr, weight_decay=weight_decay)
    draws = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=weight.device).manual_seed(seed) if sampler == "gumbel" else None
    losses = []
    with eval_mode(model):
        for _ in range(steps):
            pick = torch.randperm(len(y), generator=draws)[:batch_size]
            xb, yb = x[pick].to(weight.device), y[pick].to(weight.device)
            feats, capture = _features(model, target.layer, xb, yb)                  # [B, m, n, 4]
            z = gcn(feats)                                                           # [B, N]
            mask = relaxed_topk(z, target.top_k, sampler=sampler, temperature=temperature,
                                straight_through=straight_through, generator=noise)
            pi = log_pi if log_pi is not None else log_prior(weight, capture.grad, kind="gradient")
            loss = mimu_loss(model, f"{target.layer}.weight", xb, yb, z, mask, pi)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return gcn.eval(), losses


def representatives(y: Tensor, num_classes: int, n: int, *, seed: int | None = 0) -> list[Tensor]:
    """For each class c, the indices into y of up to n of its samples: a uniform choice without replacement from a
    torch.Generator seeded with `seed`, or (seed=None) the first n in order (n=1: the reference's one sample per
    class, §6.1). All of them when a class has fewer; ValueError naming the classes that have none."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_representatives={n!r} must be a positive int")
    y = y.reshape(-1).cpu()
    pools = [(y == c).nonzero().flatten() for c in range(num_classes)]
    empty = [c for c, pool in enumerate(pools) if len(pool) == 0]
    if empty:
        raise ValueError(f"no training sample of class(es) {empty} among the {len(y)} given: every class needs a "
                         "representative for its mask")
    if seed is None:
        return [pool[:n] for pool in pools]
    g = torch.Generator().manual_seed(seed)
    return [pool[torch.randperm(len(pool), generator=g)[:n]] for pool in pools]


@torch.no_grad()
def class_logits(gcn: MaskGCN, model: nn.Module, layer: str, x: Tensor, y: Tensor, *, n_representatives: int = 8,
                 seed: int | None = 0, batch_size: int = 64) -> Tensor:
    """z̄ [C, N]: for each of the model's C classes, the mean GCN logits over its representatives among the
    training samples (x, y) (`representatives`: a seeded choice, or the first ones with seed=None) (§6.1–§6.2)."""
    target = _resolve(model, masked_layer=layer)
    chosen = representatives(y, target.num_classes, n_representatives, seed=seed)
    index = torch.cat(chosen)
    owner = y.reshape(-1).cpu()[index]
    z = torch.cat([gcn(f) for f in graph_batches(model, target.layer, x[index], owner, batch_size=batch_size)])
    sums = torch.zeros(target.num_classes, target.num_weights, dtype=z.dtype, device=z.device)
    sums.index_add_(0, owner.to(z.device), z)
    return sums / torch.tensor([len(c) for c in chosen], dtype=z.dtype, device=z.device)[:, None]


# --- data ---------------------------------------------------------------------------------------------------------

def _labels(dataset: Dataset) -> Tensor:
    """Every label of a classification data set, [len] int64 (read without the inputs where the type allows)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].reshape(-1).long().cpu()
    if isinstance(dataset, ImageSubset):
        return torch.from_numpy(dataset.y[dataset.indices].astype(np.int64))
    from ..tasks import get_task
    from ._relabel import labels_of

    return labels_of(get_task("classifier"), dataset)


def load_samples(dataset: Dataset, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(x [S, ...], y [S]) of the items at `index` in that order (None: the whole data set), for the stages."""
    batches = list(DataLoader(dataset if index is None else Subset(dataset, index.tolist()), batch_size=1024))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).long()


def _single_forget_class(data: Any, forget_class: int | None) -> int | None:
    """The class to forget: `forget_class` when set, else the one class of data.forget_classes, else the one label
    of the forget set. ValueError when there are several (MIMU forgets one class at a time)."""
    if forget_class is not None:
        return forget_class
    classes = tuple(getattr(data, "forget_classes", ()) or ())
    if len(classes) > 1:
        raise ValueError(f"MIMU forgets one class; data.forget_classes = {classes}: set forget_class to one of them")
    if classes:
        return int(classes[0])
    labels = _labels(data.forget).unique()
    if len(labels) != 1:
        shown = labels[:10].tolist()
        raise ValueError(f"MIMU forgets one class, but the forget set holds {len(labels)} labels ({shown}"
                         f"{' ...' if len(labels) > 10 else ''}) and data.forget_classes is empty: set forget_class "
                         "or use a class split")
    return int(labels[0])


# --- the method ---------------------------------------------------------------------------------------------------

@register_method("mimu", paper=PAPER, tasks=("classifier",))
@dataclass
class MIMU:
    """Zero the κ weights of the head's input layer that the forget class needs and the other classes do not, as
    ranked by a GCN trained on per-weight activation and gradient features."""

    uses: ClassVar[tuple[str, ...]] = ("forget", "retain")   # the training data D = D_r ∪ D_f
    toy_model: ClassVar[tuple[str, dict[str, Any]]] = TOY_MODEL
    toy_scenario: ClassVar[str] = "class"

    masked_layer: str | None = param(None, help="module name of the masked layer (None: the Linear feeding the head)")
    top_k: int | float = param(8000 / 8192, ge=0, help="K: weights in each class's top-K mask, an int or a fraction "
                                                       "of N (8000 of the MLP's 8192)")
    kappa: int | float = param(0.5, ge=0, help="κ: weights zeroed, an int or a fraction of N (strategy='rank')")
    strategy: Literal["rank", "set_difference"] = param("rank", help="rank by (s, s_soft) and zero the top-κ, or "
                                                                     "zero exactly M_f ∧ ¬(∨ M_c) (κ unused)")
    cap_to_forget_specific: bool = param(False, help="zero at most the weights with s > 0")
    forget_class: int | None = param(None, ge=0, help="the class to forget (None: data.forget_classes, which must "
                                                      "hold one class, or the one label of the forget set)")
    n_representatives: int = param(8, gt=0, help="training samples per class averaged into its logits")
    graph_samples: int = param(2048, gt=0, help="training samples that train the GCN (all when fewer)")
    steps: int = param(32, ge=0, help="GCN optimiser steps")
    batch_size: int = param(64, gt=0, help="samples per GCN step")
    lr: float = param(1e-2, gt=0, help="GCN AdamW learning rate")
    weight_decay: float = param(5e-4, ge=0, help="GCN AdamW weight decay")
    hidden: int = param(32, gt=0, help="GCN width")
    rounds: int = param(3, gt=0, help="GCN message-passing rounds (the input projection is the first)")
    activation: Literal["sigmoid", "relu"] = param("sigmoid", help="GCN activation")
    prior: Literal["weight", "gradient"] = param("weight", help="π ∝ |W| or the per-sample |∂L/∂W|")
    sampler: Literal["relaxed_topk", "gumbel"] = param("relaxed_topk", help="the relaxed top-K mask of the loss")
    temperature: float | None = param(None, gt=0, help="τ of the relaxed top-K and of the class masks P_c (None: "
                                                       "0.1; gumbel sampling T: 1)")
    straight_through: bool = param(False, help="hard top-K forward, relaxed gradient backward")
    seed: int = param(0, help="seed of the graph samples, the representatives, the GCN and its batches")

    def check(self, model: nn.Module, data: Any) -> Target:
        """Every check, before any capture or GCN step: the hyperparameters, the data sets, the head contract, K,
        κ and the forget class."""
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        return _resolve(model, masked_layer=self.masked_layer, top_k=self.top_k,
                        kappa=self.kappa if self.strategy == "rank" else None,
                        forget_class=_single_forget_class(data, self.forget_class),
                        data_classes=getattr(data, "num_classes", None))

    def gcn_options(self) -> dict[str, Any]:
        """The keyword arguments of `train_gcn` other than top_k."""
        names = ("steps", "batch_size", "lr", "weight_decay", "hidden", "rounds", "activation", "prior", "sampler",
                 "temperature", "straight_through", "seed")
        return {name: getattr(self, name) for name in names}

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        target = self.check(model, data)
        start = time.perf_counter()
        model.to((accelerator or default_accelerator()).device)
        train = ConcatDataset([data.retain, data.forget])
        labels = torch.cat([_labels(data.retain), _labels(data.forget)])                  # [|D|]
        g = torch.Generator().manual_seed(self.seed)
        graph_x, graph_y = load_samples(train, torch.randperm(len(train), generator=g)[:self.graph_samples])
        gcn, self.gcn_losses_ = train_gcn(model, target.layer, graph_x, graph_y, top_k=target.top_k,
                                          **self.gcn_options())
        chosen = torch.cat(representatives(labels, target.num_classes, self.n_representatives, seed=self.seed))
        rep_x, rep_y = load_samples(train, chosen)
        logits = class_logits(gcn, model, target.layer, rep_x, rep_y, n_representatives=self.n_representatives,
                              seed=None, batch_size=self.batch_size)                      # all of them, in order
        keep, info = forget_mask(logits, target.forget_class, top_k=target.top_k, kappa=target.kappa,
                                 temperature=self.temperature or 0.1, strategy=self.strategy,
                                 cap_to_forget_specific=self.cap_to_forget_specific)
        apply_mask(model, target.layer, keep)
        self.masked_layer_, self.forget_class_ = target.layer, target.forget_class
        self.top_k_, self.kappa_ = target.top_k, target.kappa
        self.num_forget_specific_, self.kappa_used_ = info["num_forget_specific"], info["kappa_used"]
        self.mask_info_ = info
        self.class_logits_ = logits.cpu()        # [C, N]: pure_class_mask(class_logits_, f, top_k_) for §6.6
        self.keep_mask_ = keep.bool().cpu()      # [N]
        self.seconds_ = time.perf_counter() - start
        return model
