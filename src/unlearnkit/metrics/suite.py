"""Registered classifier metrics: thin bindings of the pure functions in `classifier.py` and `mia.py` to the
outputs of `evaluate.collect_outputs`. Accuracies are in %, MIA scores in [0, 1]."""

from __future__ import annotations

import warnings

import numpy as np

from .._registry import METRICS
from . import classifier as C
from . import mia
from .evaluate import Evaluation


@METRICS.register("accuracy", task="classifier", needs_reference=False)
def accuracy(ev: Evaluation, ref: Evaluation | None = None) -> dict[str, float]:
    """forget_acc, retain_acc, test_acc = 100·mean(argmax f(x) = y) on D_f, D_r, D_t (higher = better on D_r, D_t;
    on D_f the target is the retrained model's value); UA = 100 − forget_acc. With forget classes, also the test
    accuracy on the forget classes (test_forget_acc) and on the other classes (test_retain_acc)."""
    out = {f"{s}_acc": C.accuracy(ev.logits[s], ev.labels[s]) for s in ("forget", "retain", "test")}
    out["ua"] = 100.0 - out["forget_acc"]
    in_forget = None
    if ev.test_forget is not None and len(ev.test_forget):  # class / sub-class scenario ("Df" and "Dr" of SSD/JiT)
        in_forget = np.zeros(len(ev.labels["test"]), dtype=bool)
        in_forget[ev.test_forget] = True
    elif ev.forget_classes:
        in_forget = np.isin(ev.labels["test"], ev.forget_classes)
    if in_forget is not None:
        out["test_forget_acc"] = C.accuracy(ev.logits["test"][in_forget], ev.labels["test"][in_forget])
        out["test_retain_acc"] = C.accuracy(ev.logits["test"][~in_forget], ev.labels["test"][~in_forget])
    return out


@METRICS.register("cross_entropy", task="classifier", needs_reference=False)
def cross_entropy(ev: Evaluation, ref: Evaluation | None = None) -> dict[str, float]:
    """forget_ce, retain_ce = mean −log p(y|x) on D_f and D_r (nats)."""
    return {f"{s}_ce": C.cross_entropy(ev.logits[s], ev.labels[s]) for s in ("forget", "retain")}


@METRICS.register("forget_class_prob", task="classifier", needs_reference=False)
def forget_class_prob(ev: Evaluation, ref: Evaluation | None = None) -> dict[str, float]:
    """forget_class_prob = mean_{i∈D_f} softmax(f(x_i))[y_i]: with class forgetting, the probability the model still
    gives each forget example's (forget) class, for any number of forget classes; lower = more forgotten."""
    return {"forget_class_prob": C.true_class_prob(ev.logits["forget"], ev.labels["forget"])}


def _finite(ev: Evaluation, metric: str) -> bool:
    """Attacks cannot be fitted on non-finite outputs (a diverged model): say so and report NaN instead."""
    if all(np.isfinite(v).all() for v in ev.logits.values()):
        return True
    warnings.warn(f"{metric}: the model's logits are not finite (diverged?); reporting NaN", RuntimeWarning,
                  stacklevel=3)
    return False


@METRICS.register("mia_svc", task="classifier", needs_reference=False)
def mia_svc(ev: Evaluation, ref: Evaluation | None = None) -> dict[str, float]:
    """SVC MIA-efficacy (SalUn): shadow members = the first |D_t| retain examples, non-members = D_t, feature
    p(y|x), SVC(C=3, rbf); score = fraction of D_f predicted non-member. Higher = more forgotten; target = retrain."""
    if not _finite(ev, "mia_svc"):
        return {"mia_svc": float("nan")}
    n = len(ev.labels["test"])
    return {"mia_svc": mia.mia_svc(ev.logits["retain"][:n], ev.labels["retain"][:n], ev.logits["test"],
                                   ev.labels["test"], ev.logits["forget"], ev.labels["forget"])}


@METRICS.register("mia_entropy_lr", task="classifier", needs_reference=False)
def mia_entropy_lr(ev: Evaluation, ref: Evaluation | None = None) -> dict[str, float]:
    """Entropy + balanced logistic-regression MIA (Bad Teacher / SSD / JiT), fitted in-sample on D_r (member) vs D_t;
    score = fraction of D_f predicted member. Lower = more forgotten; target = retrain."""
    if not _finite(ev, "mia_entropy_lr"):
        return {"mia_entropy_lr": float("nan")}
    return {"mia_entropy_lr": mia.mia_entropy_lr(ev.logits["retain"], ev.logits["test"], ev.logits["forget"])}


@METRICS.register("zrf", task="classifier", needs_reference=False)
def zrf(ev: Evaluation, ref: Evaluation | None = None) -> dict[str, float]:
    """ZRF = 1 − mean_{x∈D_f} JS(softmax f(x) ‖ softmax T_d(x)), T_d a randomly initialised model of the same
    architecture (Chundawat et al. 2023; a true Jensen–Shannon divergence in nats). In [1 − log 2, 1]; higher = the
    forget outputs look more like an untrained model's. Needs the pipeline to collect `incompetent_forget`."""
    if ev.incompetent_forget is None:
        raise ValueError("metric 'zrf' needs the forget-set logits of a randomly initialised model: collect the "
                         "outputs with collect_outputs(..., incompetent=model)")
    if not _finite(ev, "zrf"):
        return {"zrf": float("nan")}
    return {"zrf": C.zrf(ev.logits["forget"], ev.incompetent_forget)}


@METRICS.register("tow", task="classifier", needs_reference=True, requires=("accuracy", "mia_svc"))
def tow(ev: Evaluation, ref: Evaluation) -> dict[str, float]:
    """ToW = Π_{D∈{D_f,D_r,D_t}} (1 − |acc_u(D) − acc_r(D)|/100); ToW-MIA replaces the forget factor by
    (1 − |MIA_u − MIA_r|) with the SVC MIA (RUM, Zhao et al. 2024). Both in [0, 1]; 1 = identical to retrain.
    Also `disagreement`: the fraction of D_f whose predicted class differs from the retrained model's."""
    u, r = ev.values, ref.values
    acc_u = {k: u[f"{k}_acc"] for k in ("forget", "retain", "test")}
    acc_r = {k: r[f"{k}_acc"] for k in ("forget", "retain", "test")}
    return {
        "tow": C.tow(acc_u, acc_r),
        "tow_mia": C.tow_mia(u["mia_svc"], r["mia_svc"], acc_u, acc_r),
        "disagreement": C.disagreement(ev.logits["forget"], ref.logits["forget"]),
    }


@METRICS.register("avg_gap", task="classifier", needs_reference=True, requires=("accuracy", "mia_svc"))
def avg_gap(ev: Evaluation, ref: Evaluation) -> dict[str, float]:
    """Avg. Gap = mean |m_u − m_r| over UA, RA, TA and MIA-efficacy (all in %) (SalUn / ℓ1-sparse); lower = better."""

    def pick(v: dict[str, float]) -> dict[str, float]:
        return {"ua": v["ua"], "ra": v["retain_acc"], "ta": v["test_acc"], "mia": 100.0 * v["mia_svc"]}

    return {"avg_gap": C.avg_gap(pick(ev.values), pick(ref.values))}


CLASSIFIER_METRICS = ("accuracy", "cross_entropy", "forget_class_prob", "mia_svc", "mia_entropy_lr", "zrf", "tow",
                      "avg_gap")
