"""What the original training records for the memorisation proxies (vision.md §5.2), and the cached original with
its record (used by metrics/scores.py).

    result, record = record_training(model, train_set, task, recipe, curvature_h=0.01)
    record.proxy("confidence")          # [N] over the training set, higher = more memorised

`record_training` trains EXACTLY as `methods.retrain.fit(model, dataset, task, recipe)` does: the same batches in
the same order, and the same weights, bit for bit. It only wraps the data set so that each item carries its index,
and trains with a loss that computes the logits once, notes the softmax of every example of the batch (detached, no
random number drawn) and returns the task's batch-mean cross-entropy. So the learning-event proxies are means over
epochs of per-epoch quantities of each example's PRE-UPDATE, TRAIN-MODE softmax: the forward pass whose loss is
back-propagated (§5.2). With `curvature_h`, the input-space loss curvature of every training example is measured
after each epoch, in eval mode (BatchNorm statistics untouched, no dropout, no random number: the trajectory is
unchanged).

A record holds per-example accumulators, not [E, N, C] outputs: the count of epochs with a finite softmax row and,
per proxy, the sum of its per-epoch quantity over those epochs (memorization.PROXY_EPOCH_VALUES, the functions the
[E, N, C] proxies use), plus the curvature sums and counts. Under a multi-process launch each process records the
examples of its own shard and the accumulators are summed across processes at the end. (accelerate's even batches
may repeat a few examples in the last batch of an epoch; they then count twice in that epoch's mean.)
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from .memorization import PROXY_EPOCH_VALUES, loss_curvature, proxy_from_sums

EVENT_PROXIES = tuple(PROXY_EPOCH_VALUES)  # confidence, max_conf, neg_entropy, binary_acc
RECORD_OPTIONS = ("curvature_h",)


@dataclass
class TrainingRecord:
    """Per-example accumulators over the N training examples, summed over the epochs of one training run.

    count [N]:            epochs in which the example's softmax row was finite (non-finite rows are dropped)
    sums[name] [N]:       Σ over those epochs of the proxy's per-epoch quantity (name in EVENT_PROXIES)
    curvature_sum [N]:    Σ over epochs of the loss curvature with step curvature_h (None when not recorded)
    curvature_count [N]:  epochs with a finite curvature
    epochs:               passes over the training set
    """

    count: np.ndarray
    sums: dict[str, np.ndarray]
    epochs: int = 0
    curvature_h: float | None = None
    curvature_sum: np.ndarray | None = None
    curvature_count: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, curvature_h: float | None = None) -> TrainingRecord:
        zeros = lambda: np.zeros(n, dtype=np.float64)  # noqa: E731
        curv = curvature_h is not None
        return cls(zeros(), {name: zeros() for name in EVENT_PROXIES}, 0,
                   None if curvature_h is None else float(curvature_h), zeros() if curv else None,
                   zeros() if curv else None)

    @property
    def n(self) -> int:
        return int(self.count.shape[0])

    def add_softmax(self, index: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> None:
        """Note one batch: training indices [B], softmax rows [B, C] (float64), labels [B]."""
        finite = np.isfinite(probs).all(axis=-1)  # [B]
        np.add.at(self.count, index, finite)
        for name, per_epoch in PROXY_EPOCH_VALUES.items():
            np.add.at(self.sums[name], index, np.where(finite, per_epoch(probs, labels), 0.0))

    def add_curvature(self, index: np.ndarray, values: np.ndarray) -> None:
        """Note one epoch's curvature of the training examples at `index`."""
        if self.curvature_sum is None or self.curvature_count is None:
            raise ValueError("this record was made without curvature_h; it cannot hold curvature values")
        finite = np.isfinite(values)
        np.add.at(self.curvature_count, index, finite)
        np.add.at(self.curvature_sum, index, np.where(finite, values, 0.0))

    def proxy(self, name: str) -> np.ndarray:
        """Score [N] float64, higher = more memorised: a learning-event proxy (the negated mean over epochs of its
        per-epoch quantity; NaN for an example without a finite softmax row) or "curvature" (the mean over epochs of
        the per-epoch loss curvature, not negated)."""
        if name == "curvature":
            if self.curvature_sum is None or self.curvature_count is None:
                raise ValueError("this record holds no curvature: train with curvature_h set "
                                 "(record_options {'curvature_h': h})")
            return -proxy_from_sums(self.curvature_sum, self.curvature_count)
        if name not in self.sums:
            raise ValueError(f"unknown proxy {name!r}; a record gives: {', '.join((*EVENT_PROXIES, 'curvature'))}")
        return proxy_from_sums(self.sums[name], self.count)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The record as named float64 tensors (a cache tensor entry)."""
        out = {"count": self.count, **{f"sum.{k}": v for k, v in self.sums.items()},
               "epochs": np.asarray(float(self.epochs))}
        if self.curvature_h is not None:
            out.update({"curvature_h": np.asarray(self.curvature_h), "curvature_sum": self.curvature_sum,
                        "curvature_count": self.curvature_count})
        return {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in out.items()}  # copies

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> TrainingRecord:
        missing = [k for k in ("count", "epochs", *(f"sum.{p}" for p in EVENT_PROXIES)) if k not in tensors]
        if missing:
            raise ValueError(f"not a training record: missing {', '.join(missing)}")
        a = {k: t.double().numpy() for k, t in tensors.items()}
        curv = "curvature_h" in a
        return cls(a["count"], {p: a[f"sum.{p}"] for p in EVENT_PROXIES}, int(a["epochs"].item()),
                   float(a["curvature_h"].item()) if curv else None, a.get("curvature_sum"), a.get("curvature_count"))

    def all_reduce(self) -> None:
        """Sum the accumulators over the processes of a torch.distributed run (a no-op in one process)."""
        if not _distributed():
            return
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        arrays = [self.count, *self.sums.values()]
        if self.curvature_sum is not None and self.curvature_count is not None:
            arrays += [self.curvature_sum, self.curvature_count]
        for a in arrays:
            t = torch.from_numpy(a).to(device) if device is not None else torch.from_numpy(a)
            dist.all_reduce(t)
            a[:] = t.cpu().numpy()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def _any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (so that every process takes the same, collective, branch)."""
    if not _distributed():
        return flag
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class _Indexed(Dataset):
    """Item i of `dataset` paired with i. A batch is `(the batch `dataset` would give, indices [B])`: the wrapped
    data set's `__getitems__` (a whole batch at once, e.g. batch augmentation) and `collate` are used when it has
    them, so the batches are exactly those of `dataset` alone."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[i], int(i)

    def __getitems__(self, ids: Sequence[int]) -> list[tuple[Any, int]]:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(ids) if many else [self.dataset[i] for i in ids]  # what DataLoader's fetcher does
        return list(zip(items, (int(i) for i in ids), strict=True))

    def collate(self, items: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        inner = getattr(self.dataset, "collate", None) or default_collate
        return inner([item for item, _ in items]), torch.tensor([i for _, i in items], dtype=torch.int64)


def _shard(n: int) -> np.ndarray:
    """The training indices this process measures (all of them in one process)."""
    if not _distributed():
        return np.arange(n)
    return np.arange(n)[torch.distributed.get_rank()::torch.distributed.get_world_size()]


def record_training(model: nn.Module, dataset: Dataset, task: Any, recipe: Any, *, curvature_h: float | None = None,
                    curvature_data: Dataset | None = None, accelerator: Any = None, desc: str = "original",
                    eval_batch_size: int = 512) -> tuple[Any, TrainingRecord]:
    """Train `model` in place exactly like `fit(model, dataset, task, recipe)` and record, for item i of `dataset`,
    its softmax statistics at every epoch (and, with `curvature_h`, its loss curvature after every epoch).

    `dataset` is the training set in the order the scores index (the pipelines pass all of D_train in data order).
    The curvature is measured on `curvature_data` (default `dataset`; it must be given when `dataset` augments: the
    curvature of an augmented view is not the example's, and drawing augmentations would change the training).
    Returns `(LoopResult, TrainingRecord)`; the result's `seconds` exclude the curvature measurements.
    """
    from ..methods._loop import run_loop

    if getattr(task, "name", None) != "classifier":
        raise ValueError(f"record_training records softmax outputs of a classifier; got task "
                         f"{getattr(task, 'name', task)!r}")
    n = len(dataset)  # type: ignore[arg-type]
    record = TrainingRecord.empty(n, curvature_h)

    def loss(m: nn.Module, _forget: Any, batch: Any, _refs: Any) -> torch.Tensor:
        inner, index = batch
        logits = task.logits(m, inner)  # [B, C], the one forward pass of this step
        labels = task.labels(inner)
        probs = torch.softmax(logits.detach().double(), dim=-1)  # [B, C], pre-update, train mode
        record.add_softmax(index.cpu().numpy(), probs.cpu().numpy(), labels.detach().cpu().numpy())
        return F.cross_entropy(logits, labels, reduction="none").mean()  # = task.loss(m, inner)

    measured = [0.0]  # seconds spent measuring curvature inside the loop
    epochs = [0]
    measure = _curvature_meter(model, dataset, curvature_data, curvature_h, record, eval_batch_size) \
        if curvature_h is not None else None

    def on_epoch(e: int) -> None:
        epochs[0] = e + 1
        if e > 0 and measure is not None:  # the end of epoch e − 1
            measured[0] += measure()

    result = run_loop(model, loss, recipe, retain=_Indexed(dataset), pairing="retain", on_epoch=on_epoch,
                      accelerator=accelerator, desc=desc)
    if measure is not None and result.steps > 0:
        measure()  # the end of the last epoch
    result.seconds -= measured[0]
    record.epochs = epochs[0]
    record.all_reduce()
    return result, record


def _curvature_meter(model: nn.Module, dataset: Dataset, curvature_data: Dataset | None, h: float,
                     record: TrainingRecord, batch_size: int) -> Callable[[], float]:
    """A function that adds one epoch's curvature of this process's shard to `record` and returns its seconds."""
    if curvature_data is None and getattr(dataset, "augment", False):
        raise ValueError("the training set augments its items: pass curvature_data, the same examples without "
                         "augmentation, for the curvature measurements")
    source = dataset if curvature_data is None else curvature_data
    if len(source) != record.n:  # type: ignore[arg-type]
        raise ValueError(f"curvature_data has {len(source)} examples; the training set has {record.n}")  # type: ignore[arg-type]
    shard = _shard(record.n)
    loader = DataLoader(Subset(source, shard.tolist()), batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(source, "collate", None))

    def measure() -> float:
        start = time.perf_counter()
        values = [loss_curvature(model, x, y, h) for x, y in loader]  # eval mode; the mode is restored
        record.add_curvature(shard, np.concatenate(values))
        return time.perf_counter() - start

    return measure


def original_with_record(cache: Any, spec: Mapping[str, Any], fresh_model: nn.Module, dataset: Dataset, task: Any,
                         recipe: Any, record_options: Mapping[str, Any] | None, *, say: Callable[[str], Any] = print,
                         curvature_data: Dataset | None = None,
                         accelerator: Any = None) -> tuple[nn.Module, dict, bool, str, TrainingRecord | None]:
    """`(model, meta, hit, key, record)`: the original model, cached under `spec_key(spec)` exactly as the
    classification pipeline caches its original (a model trained by `unlearnkit run` is reused), and its training
    record, a tensor entry keyed by that key and `record_options` ({} or {"curvature_h": h}).

    * record_options None (the score reads no record): the original alone, trained with `fit` if missing, exactly
      as the classification pipeline does; record None.
    * model and record cached: both are loaded (hit=True; nothing trains).
    * record missing: `fresh_model` (the builder's untrained model) is trained with `record_training` and the record
      stored; the model is stored too if it was missing. If the model was cached, the cached weights are kept and
      compared with the retrained ones: a difference (e.g. non-deterministic GPU kernels) is warned about, as the
      record then describes a twin of the model rather than the model itself.
    * record cached, model missing: trained again with recording (the cached record is returned).
    `meta` is the model entry's meta ("spec", "train_time_s"); hit = nothing was trained. `recipe` must be the one
    `spec` describes; `curvature_data` is passed to `record_training` (needed when `dataset` augments).
    """
    from ..cache import spec_key
    from ..pipelines._stages import versioned

    key = spec_key(spec)
    if record_options is None:
        from ..methods.retrain import fit

        def train(m: nn.Module) -> dict[str, Any]:
            return {"train_time_s": fit(m, dataset, task, recipe, accelerator=accelerator, desc="original").seconds}

        model, meta, hit = cache.get_or_build(key, fresh_model, train, spec=spec)
        return model.eval(), meta, hit, key, None
    options = dict(record_options)
    unknown = sorted(set(options) - set(RECORD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown record option(s) {unknown}; allowed: {', '.join(RECORD_OPTIONS)}")
    record_spec = versioned({"kind": "training_record", "original": key, "options": options})
    record_key = spec_key(record_spec)
    stored, _ = cache.load_tensors(record_key)
    record = TrainingRecord.from_tensors(stored) if stored is not None else None
    missing = _any_process(record is None)
    untrained = copy.deepcopy(fresh_model) if missing else None
    kwargs = {"curvature_h": options.get("curvature_h"), "curvature_data": curvature_data,
              "accelerator": accelerator, "desc": "original"}
    trained: list[TrainingRecord] = []

    def build(m: nn.Module) -> dict[str, Any]:
        result, rec = record_training(m, dataset, task, recipe, **kwargs)
        trained.append(rec)
        return {"train_time_s": result.seconds}

    model, meta, model_hit = cache.get_or_build(key, fresh_model, build, spec=spec)
    if missing and model_hit:  # the original is cached but was trained without recording: train a twin
        assert untrained is not None
        say(f"original {key} is cached without a training record {options}: training a twin to record it")
        _, rec = record_training(untrained, dataset, task, recipe, **kwargs)
        trained.append(rec)
        if not _same_weights(untrained, model):
            warnings.warn(f"original {key}: retraining it to record its training did not reproduce the cached "
                          "weights (non-deterministic kernels?); the record describes the retrained twin, the "
                          "cached weights are kept", RuntimeWarning, stacklevel=2)
    if record is None:
        record = trained[-1]
        cache.save_tensors(record_key, record.to_tensors(), {"spec": record_spec, "original": key})
    say(f"training record {options} of original {key}: {'recorded' if trained else 'loaded'} (key {record_key})")
    return model.eval(), meta, model_hit and not trained, key, record


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
