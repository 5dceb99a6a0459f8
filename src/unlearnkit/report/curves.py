"""Curves of sequence-model benchmarks (specs/markov_imu.md §4): each metric against the unlearning iteration, one
line per method (mean over seeds), the retrained model's value dashed; and the SimNPO-style trade-off plot
(x = retain distance, y = forget quality on forget1 solid / forget2 dashed, original and retrained as points)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes

FAMILIES = {"kl_retrain": "KL(p_retrain ‖ p_θ) ↓", "kl_true": "KL(P_chain ‖ p_θ)", "loss": "token cross-entropy"}
SPLITS = ("retain", "forget", "forget1", "forget2")


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def mean_curves(rows: list[dict]) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """label -> (steps, {metric: mean over the label's rows (seeds) at each step}) for rows that carry a curve."""
    out: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for label in dict.fromkeys(r["label"] for r in rows if r.get("curve")):
        curves = [r["curve"] for r in rows if r["label"] == label and r.get("curve")]
        length = min(len(c) for c in curves)
        steps = np.array([p["step"] for p in curves[0][:length]])
        keys = [k for k in curves[0][0] if k != "step"]
        out[label] = (steps, {k: np.mean([[p.get(k, np.nan) for p in c[:length]] for c in curves], axis=0)
                              for k in keys})
    return out


def _final(rows: list[dict], label: str, key: str) -> float:
    values = [r["metrics"].get(key) for r in rows if r["label"] == label]
    values = [v for v in values if isinstance(v, int | float)]
    return float(np.mean(values)) if values else float("nan")


def plot_curves(rows: list[dict], run_dir: Path, stem: str) -> list[Path]:
    """Write <stem>-curve-<family>.png per metric family and <stem>-tradeoff.png; return their paths."""
    import matplotlib
    from matplotlib.figure import Figure

    curves = mean_curves(rows)
    if not curves:
        return []
    palette = matplotlib.colormaps["tab20"]
    color = {label: palette(i % 20) for i, label in enumerate(curves)}
    paths = []
    for family, title in FAMILIES.items():
        fig = Figure(figsize=(11, 7))
        for i, split in enumerate(SPLITS):
            ax = fig.add_subplot(2, 2, i + 1)
            key = f"{family}_{split}"
            for label, (steps, values) in curves.items():
                if key in values:
                    ax.plot(steps, values[key], label=label, linewidth=1.2, color=color[label])
            target = _final(rows, "retrain", key)
            if np.isfinite(target):
                ax.axhline(target, color="black", linestyle="--", linewidth=1, label="retrain")
            ax.set_title(f"{split}")
            ax.set_xlabel("unlearning iteration")
            ax.set_ylabel(title)
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7)
        fig.suptitle(f"{title} during unlearning (mean over seeds)")
        fig.subplots_adjust(right=0.8, hspace=0.35, wspace=0.3)
        paths.append(_save(fig, Path(run_dir) / f"{stem}-curve-{family}.png"))

    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot(1, 1, 1)
    for label, (_, values) in curves.items():
        if "kl_true_retain" not in values:
            continue
        ax.plot(values["kl_true_retain"], values["kl_true_forget1"], label=label, linewidth=1.2, color=color[label])
        ax.plot(values["kl_true_retain"], values["kl_true_forget2"], linestyle="--", color=color[label], linewidth=1.0)
    for label, marker in (("original", "o"), ("retrain", "*")):
        x = _final(rows, label, "kl_true_retain")
        for split, fill in (("forget1", "full"), ("forget2", "none")):
            ax.plot([x], [_final(rows, label, f"kl_true_{split}")], marker=marker, markersize=11, color="black",
                    fillstyle=fill, linestyle="none", label=f"{label} ({split})")
    ax.set_xlabel("retain distance: KL(P_retain ‖ p_θ) on retain ↓")
    ax.set_ylabel("forget quality: KL(P_chain ‖ p_θ) (forget1 solid, forget2 dashed)")
    ax.set_title("trade-off during unlearning")
    ax.legend(fontsize=7, loc="best")
    paths.append(_save(fig, Path(run_dir) / f"{stem}-tradeoff.png"))
    return paths


def plot_tofu(rows: list[dict], run_dir: Path, stem: str) -> list[Path]:
    """TOFU figures: <stem>-tofu-tradeoff.png, forget quality (log scale) against model utility, one point per method
    (mean over seeds; the original and the retain model marked), as in OpenUnlearning's plots; and, for runs
    evaluated during unlearning (eval.every), <stem>-tofu-curves.png with both metrics against the step."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot(1, 1, 1)
    for label in labels:
        x, y = _final(rows, label, "model_utility"), _final(rows, label, "forget_quality")
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        marker = {"original": "o", "retain": "*"}.get(label, "s")
        ax.plot([x], [max(y, 1e-300)], marker=marker, markersize=11 if label in ("original", "retain") else 7,
                linestyle="none", color="black" if label in ("original", "retain") else None)
        ax.annotate(label, (x, max(y, 1e-300)), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("model utility ↑")
    ax.set_ylabel("forget quality ↑ (KS p-value vs the retain model, log scale)")
    ax.set_title("TOFU: forget quality vs model utility (mean over seeds)")
    paths = [_save(fig, Path(run_dir) / f"{stem}-tofu-tradeoff.png")]

    curves = mean_curves(rows)
    if curves:
        fig = Figure(figsize=(12, 5))
        for i, (key, title, log) in enumerate((("forget_quality", "forget quality ↑", True),
                                               ("model_utility", "model utility ↑", False))):
            ax = fig.add_subplot(1, 2, i + 1)
            for label, (steps, values) in curves.items():
                if key in values:
                    ax.plot(steps, np.maximum(values[key], 1e-300) if log else values[key], label=label)
            target = _final(rows, "retain", key)
            if np.isfinite(target):
                ax.axhline(target, color="black", linestyle="--", linewidth=1, label="retain")
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("unlearning step")
            ax.set_title(title)
        ax.legend(fontsize=7, loc="best")
        paths.append(_save(fig, Path(run_dir) / f"{stem}-tofu-curves.png"))
    return paths


def plot_rum_groups(rows: list[dict], run_dir: Path, stem: str) -> list[Path]:
    """RUM figure <stem>-rum-groups.png: ToW (top) and ToW-MIA (bottom) against the forget group (low -> high score,
    then the whole forget set), mean over seeds with 95% t-interval error bars. One panel per method with its
    vanilla / shuffle / RUM lines (and one for the named plans); a study of separate groups (vanilla only) is one
    panel with a line per method. The original model ("do nothing") is the dashed grey line in every panel."""
    from matplotlib.figure import Figure

    from ..metrics.stats import t_interval

    rows = [r for r in rows if isinstance(r.get("rum"), dict) and isinstance(r.get("groups"), dict)]
    if not rows:
        return []
    groups = rows[0].get("group_order") or list(rows[0]["groups"])  # low -> high (the JSON keys are sorted)
    kinds = {r["rum"]["kind"] for r in rows}
    separate = not kinds & {"shuffle", "rum", "plan"}
    if separate:
        panels = {"methods": [r for r in rows if r["rum"]["kind"] == "vanilla"]}
        line_of = lambda r: r["rum"]["method"]  # noqa: E731
    else:
        methods = list(dict.fromkeys(r["rum"]["method"] for r in rows if r["rum"]["kind"] in VARIANT_STYLE))
        panels = {m: [r for r in rows if r["rum"]["method"] == m and r["rum"]["kind"] in VARIANT_STYLE]
                  for m in methods}
        if "plan" in kinds:
            panels["plans"] = [r for r in rows if r["rum"]["kind"] == "plan"]
        line_of = lambda r: r["rum"]["kind"] if r["rum"]["kind"] != "plan" else r["label"]  # noqa: E731
    original = [r for r in rows if r["rum"]["kind"] == "original"]
    ticks = [f"{g}\n{_group_caption(rows[0]['groups'][g])}" for g in groups]
    with_all = any("tow" in r["metrics"] for r in rows)
    xs = list(range(len(groups) + with_all))
    fig = Figure(figsize=(4.2 * len(panels), 7.5))
    for col, (title, members) in enumerate(panels.items()):
        for row_i, (metric, name) in enumerate((("tow", "ToW"), ("tow_mia", "ToW-MIA"))):
            ax = fig.add_subplot(2, len(panels), row_i * len(panels) + col + 1)
            keys = [f"{metric}_{g}" for g in groups] + ([metric] if with_all else [])
            for line in [*dict.fromkeys(line_of(r) for r in members), "original"]:
                chosen = original if line == "original" else [r for r in members if line_of(r) == line]
                ivs = [t_interval([r["metrics"][k] for r in chosen if _is_number(r["metrics"].get(k))]) for k in keys]
                mean = [iv.mean for iv in ivs]
                err = [iv.half_width if iv.n >= 2 and np.isfinite(iv.half_width) else 0.0 for iv in ivs]
                style = {"color": "grey", "linestyle": "--"} if line == "original" else VARIANT_STYLE.get(line, {})
                ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=line, **style)
            ax.set_xticks(xs)
            ax.set_xticklabels(ticks + (["all"] if with_all else []), fontsize=7)
            ax.set_ylabel(f"{name} ↑ (1 = retrain)")
            ax.set_title(f"{title}: {name}", fontsize=10)
            if row_i == 0:
                ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("RUM: closeness to retraining per forget group (mean, 95% CI over seeds)")
    fig.tight_layout()
    return [_save(fig, Path(run_dir) / f"{stem}-rum-groups.png")]


VARIANT_STYLE = {"vanilla": {"color": "#4C72B0"}, "shuffle": {"color": "#DD8452"}, "rum": {"color": "#55A868"}}


def _group_caption(described: dict) -> str:
    return f"score {described.get('score_mean', float('nan')):.2g}\nES {described.get('es', float('nan')):.2g}"


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
