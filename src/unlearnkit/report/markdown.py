"""Markdown reports rebuilt from a run's ``results.jsonl``.

Every benchmark run appends one JSON row per evaluated model to ``<run_dir>/results.jsonl``.  This module
turns those rows into a human-readable report: rows are de-duplicated (:func:`latest_rows`), aggregated
over seeds into mean and 95% t-intervals (:func:`summarize`), rendered as GitHub Markdown tables
(:func:`format_table`) and matplotlib figures (:func:`plot_summary`), and assembled into
``<run_dir>/report.md`` (:func:`build_report`).  The report depends on the rows alone, so rebuilding it
from the same file gives byte-identical Markdown.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unlearnkit._io import atomic_write_bytes, atomic_write_text, read_jsonl
from unlearnkit.metrics.stats import Interval, format_interval, t_interval

__all__ = [
    "COLUMN_INFO",
    "DEFAULT_COLUMNS",
    "columns_for",
    "SummaryRow",
    "build_report",
    "column_header",
    "format_table",
    "latest_rows",
    "plot_summary",
    "summarize",
]

DEFAULT_COLUMNS: tuple[str, ...] = (
    "forget_acc",
    "retain_acc",
    "test_acc",
    "mia_svc",
    "tow",
    "tow_mia",
    "avg_gap",
    "unlearn_s",
    "rte",
)
"""Columns of the comparison table: metric keys (``row["metrics"]``) or time keys (``row["times"]``)."""

MISSING = "–"
"""Cell text for a metric that no row of the method reports."""

_FIRST_LABELS = ("original", "retrain", "retain")

NAN_MEANS = {"reach_step_forget1": "never", "retain_kl_at_reach": "never"}
"""Cell text of columns whose NaN means something (a step never reached) rather than 'not reported'."""

_RUM_GROUPS = ("low", "mid", "high", *(f"g{i}" for i in range(1, 10)))

# key -> (table header, one-line legend: formula and orientation)
COLUMN_INFO: dict[str, tuple[str, str]] = {
    **{f"kl_retrain_{s}": (f"KL→retrain {s} ↓", f"mean token KL(p_retrain ‖ p_θ) on the {s} test sequences; "
                           "0 = indistinguishable from the retrained model, lower is better")
       for s in ("forget1", "forget2", "forget", "retain")},
    **{f"kl_true_{s}": (f"KL→true {s}", f"mean token KL(P_chain ‖ p_θ) on the {s} test sequences (forget quality: "
                        "target = the retrain row)") for s in ("forget1", "forget2", "forget")},
    "kl_true_retain": ("KL→true retain ↓", "retain distance: mean token KL(P_retain ‖ p_θ) on the retain test "
                       "sequences; lower is better"),
    **{f"loss_{s}": (f"loss {s}", f"mean token cross-entropy on the {s} test sequences (nats)")
       for s in ("forget1", "forget2", "forget", "retain")},
    "reach_step_forget1": ("reach step", "first iteration at which the forget1 forget quality (KL→true forget1) "
                           "reaches the retrained model's value; – = never"),
    "retain_kl_at_reach": ("retain KL at reach ↓", "retain distance at the reach step; lower is better"),
    "forget_quality": ("forget quality ↑", "TOFU forget quality: KS-test p-value of the forget truth ratios against "
                       "the retain model's (1.0 = indistinguishable from the retain model), higher is better"),
    "model_utility": ("model utility ↑", "TOFU model utility: harmonic mean of prob, ROUGE and truth ratio on retain, "
                      "real authors and world facts, higher is better"),
    "forget_Q_A_ROUGE": ("forget ROUGE", "ROUGE-L recall of the greedy answers on the forget split; target = the "
                         "retain row"),
    "privleak": ("privleak →0", "(AUC_ret − AUC)/(1 − AUC_ret)·100 with the Min-K attack (MUSE sign convention): ≈ 0 "
                 "is good, negative = under-unlearning, positive = over-unlearning"),
    "forget_truth_ratio": ("forget TR", "mean min(R, 1/R) of the forget truth ratios (closer_to_1_better); target = "
                           "the retain row"),
    "forget_Q_A_Prob": ("forget prob", "mean exp(−avg answer loss) on the forget split; target = the retain row"),
    "extraction_strength": ("ES", "extraction strength 1 − k*/n on the forget answers; target = the retain row"),
    "mia_min_k_auc": ("MinK AUC", "Min-K% attack AUC, forget vs holdout (1 = still looks memorised); target = the "
                      "retain row, not 0.5"),
    # RUM: the same metrics on one forget group (low / mid / high score, or g1..gK) of the forget set
    **{f"tow_{g}": (f"ToW {g} ↑", f"ToW with the forget-accuracy factor taken on the '{g}' group; 1 = identical to "
                    "retrain, higher is better") for g in _RUM_GROUPS},
    **{f"tow_mia_{g}": (f"ToW-MIA {g} ↑", f"ToW-MIA with the SVC-MIA factor taken on the '{g}' group; 1 = identical "
                        "to retrain, higher is better") for g in _RUM_GROUPS},
    "forget_acc": (
        "forget acc",
        "accuracy (%) on the forget set; target = the retrain row (neither higher nor lower is "
        "better per se)",
    ),
    "retain_acc": (
        "retain acc",
        "accuracy (%) on the retain set; target = the retrain row, higher is better",
    ),
    "test_acc": (
        "test acc",
        "accuracy (%) on the held-out test set; target = the retrain row, higher is better",
    ),
    "ua": ("UA", "unlearning accuracy = 100 − forget acc (%); target = the retrain row"),
    "forget_ce": ("forget CE", "mean cross-entropy on the forget set; target = the retrain row"),
    "retain_ce": ("retain CE ↓", "mean cross-entropy on the retain set; lower is better"),
    "forget_class_prob": (
        "forget-class prob",
        "mean predicted probability of the forgotten class on the forget set; target = the retrain row",
    ),
    "mia_svc": (
        "MIA-SVC",
        "SVC MIA-efficacy = fraction of forget examples an SVC attack (retain = member, test = non-member, "
        "confidence feature) predicts non-member, in [0, 1]; higher = more forgotten, "
        "target = the retrain row",
    ),
    "mia_entropy_lr": (
        "MIA-entropy",
        "entropy logistic-regression MIA = fraction of forget examples predicted member, in [0, 1]; "
        "lower = more forgotten, target = the retrain row",
    ),
    "test_forget_acc": (
        "Df test acc",
        "accuracy (%) on the test images of the forgotten (sub-)class (SSD/JiT's \"Df\"; for a sub-class the "
        "superclass accuracy); target = the retrain row",
    ),
    "test_retain_acc": (
        "Dr test acc",
        "accuracy (%) on the test images of the other (sub-)classes (SSD/JiT's \"Dr\"); higher is better",
    ),
    "zrf": (
        "ZRF",
        "ZRF = 1 − mean JS(f(x) ‖ random model(x)) on the forget set, in [1 − log 2, 1]; higher = outputs "
        "closer to an untrained model's, target = the retrain row",
    ),
    "tow": (
        "ToW ↑",
        "ToW = Π(1 − |acc_u − acc_r|/100) over forget/retain/test; 1 = identical to retrain, "
        "higher is better",
    ),
    "tow_mia": (
        "ToW-MIA ↑",
        "ToW-MIA = (1 − |MIA_u − MIA_r|) · Π(1 − |acc_u − acc_r|/100) over retain/test (the forget-accuracy "
        "factor of ToW replaced by the SVC MIA); 1 = identical to retrain, higher is better",
    ),
    "avg_gap": (
        "Avg.Gap ↓",
        "Avg.Gap = mean |m_u − m_r| over UA, retain acc, test acc and MIA-efficacy (all in %); "
        "0 = identical to retrain, lower is better",
    ),
    # MIMU (specs/mimu.md §8): on the TEST images of the forget class (forget) and of the other classes (retain)
    "forget_score": ("forget score", "accuracy (%) on the test images of the forget class; lower = more forgotten"),
    "retain_score": ("retain score ↑", "accuracy (%) on the test images of the other classes; higher is better"),
    "forget_loss": ("forget loss", "cross-entropy over all test images of the forget class (sample-weighted); "
                    "higher = more forgotten"),
    "retain_loss": ("retain loss ↓", "cross-entropy over all test images of the other classes; lower is better"),
    "forget_prob": ("forget-class prob", "mean softmax probability of the forget class on its test images; lower = "
                    "more forgotten"),
    "num_forget_specific": ("#forget-specific", "MIMU: weights with s > 0 (needed by the forget class's top-K mask "
                            "more than by the others'); κ beyond it zeroes weights ranked by s_soft alone"),
    "unlearn_s": ("time (s)", "wall-clock seconds spent by the method's unlearning step (`times.unlearn_s`)"),
    "retrain_s": ("retrain (s)", "wall-clock seconds to retrain from scratch on the retain set"),
    "rte": (
        "RTE ↓",
        "RTE = unlearn_s / retrain_s, run time relative to retraining from scratch; lower is better",
    ),
}


@dataclass
class SummaryRow:
    """One method's aggregate over seeds inside a (benchmark, scenario, model) group.

    ``n`` is the number of rows (seeds) aggregated; ``values`` maps a column key to its
    :class:`~unlearnkit.metrics.stats.Interval`.  Columns that no row reports are absent from ``values``.
    """

    label: str
    n: int
    values: dict[str, Interval] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers


def column_header(key: str) -> str:
    """Short human-readable table header for a column key (the key itself when unknown)."""
    info = COLUMN_INFO.get(key)
    return info[0] if info else key


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _lookup(row: dict, key: str) -> float | None:
    """Numeric value of ``key`` in ``row["metrics"]``, else ``row["times"]``; ``None`` when absent."""
    for section in ("metrics", "times"):
        mapping = row.get(section)
        if isinstance(mapping, dict) and key in mapping:
            value = _number(mapping[key])
            if value is not None:
                return value
    return None


def _label(row: dict) -> str:
    label = row.get("label")
    if label is None or label == "":
        label = row.get("method", "?")
    return str(label)


def _group_key(row: dict) -> tuple[str, str, str]:
    return (str(row.get("benchmark", "?")), str(row.get("scenario", "?")), str(row.get("model", "?")))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _created_key(row: dict) -> tuple[int, float, str]:
    """Sort key for ``row["created"]``: timestamps compare chronologically; rows without one are oldest."""
    created = row.get("created")
    if created is None:
        return (0, 0.0, "")
    text = str(created)
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return (1, 0.0, text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (2, stamp.timestamp(), text)


def _format_cell(iv: Interval, digits: int) -> str:
    """``format_interval``, except that means below 1e-3 or from 1e4 up (in magnitude) use ``%.3g``."""
    mean = iv.mean
    if _finite(mean) and mean != 0.0 and not 1e-3 <= abs(mean) < 1e4:
        if not _finite(iv.half_width):
            return f"{mean:.3g}"
        return f"{mean:.3g} ± {iv.half_width:.3g}"
    return format_interval(iv, digits=digits)


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug or "x"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _sorted_unique(values: Iterable[Any]) -> list[Any]:
    unique = {_canonical(v): v for v in values if v is not None}
    try:
        return sorted(unique.values())
    except TypeError:
        return [unique[k] for k in sorted(unique)]


# ----------------------------------------------------------------------------------------------- rows


def latest_rows(rows: list[dict]) -> list[dict]:
    """Drop superseded duplicates, keeping the newest row for each evaluation.

    Two rows are duplicates when (benchmark, scenario, model, label, canonical params JSON, seed,
    split_hash) agree.  The one with the latest ``created`` timestamp survives (ties: the later one in file
    order).  Survivors keep their original relative (file) order.
    """
    best: dict[tuple, int] = {}
    for index, row in enumerate(rows):
        key = (
            *_group_key(row),
            _label(row),
            _canonical(row.get("params", {})),
            _canonical(row.get("seed")),
            str(row.get("split_hash")),
        )
        current = best.get(key)
        if current is None or _created_key(row) >= _created_key(rows[current]):
            best[key] = index
    return [rows[i] for i in sorted(best.values())]


def _split_variants(variants: dict[tuple[str, str], list[dict]]) -> dict[str, list[dict]]:
    """Rows per displayed label. Rows of one label but different `variant` (another recipe or other
    hyperparameters, e.g. re-runs into the same directory) are never averaged together: each variant is shown
    as `label#variant` whenever a label has more than one."""
    count: dict[str, int] = {}
    for label, _ in variants:
        count[label] = count.get(label, 0) + 1
    return {(f"{label}#{variant}" if count[label] > 1 else label): members
            for (label, variant), members in variants.items()}


def summarize(
    rows: list[dict], columns: Sequence[str] = DEFAULT_COLUMNS
) -> dict[tuple[str, str, str], list[SummaryRow]]:
    """Aggregate rows over seeds.

    Groups by (benchmark, scenario, model) in first-appearance order; inside a group there is one
    :class:`SummaryRow` per label (and per ``variant``, see :func:`_split_variants`) with the mean and
    95% t-interval (:func:`t_interval`) of every column
    over its rows.  Order inside a group: ``"original"``, ``"retrain"``, then the other labels in
    first-appearance order.  Pass rows through :func:`latest_rows` first to drop re-runs.
    """
    by_variant: dict[tuple[str, str, str], dict[tuple[str, str], list[dict]]] = {}
    for row in rows:
        key = (_label(row), str(row.get("variant", "")))
        by_variant.setdefault(_group_key(row), {}).setdefault(key, []).append(row)

    summary: dict[tuple[str, str, str], list[SummaryRow]] = {}
    for group, variants in by_variant.items():
        by_label = _split_variants(variants)
        labels = [lab for lab in _FIRST_LABELS if lab in by_label]
        labels += [lab for lab in by_label if lab not in _FIRST_LABELS]
        out: list[SummaryRow] = []
        for lab in labels:
            members = by_label[lab]
            values: dict[str, Interval] = {}
            for col in columns:
                series = [v for v in (_lookup(r, col) for r in members) if v is not None]
                if series:
                    values[col] = t_interval(series)
            out.append(SummaryRow(label=lab, n=len(members), values=values))
        summary[group] = out
    return summary


# ----------------------------------------------------------------------------------------------- table


def format_table(
    summary_rows: list[SummaryRow], columns: Sequence[str] = DEFAULT_COLUMNS, *, digits: int = 3
) -> str:
    """GitHub Markdown table ``| method | n | col... |`` with ``mean ± half-width`` cells.

    Cells come from :func:`format_interval` (``%.3g`` style when the mean's magnitude is below 1e-3 or at
    least 1e4, where fixed decimals would hide it); a column a method does not report shows ``–``.
    The returned text ends with a newline.
    """
    header = ["method", "n", *(column_header(c) for c in columns)]
    lines = [
        "| " + " | ".join(_escape_cell(h) for h in header) + " |",
        "|" + "|".join([" --- ", " ---: "] + [" ---: "] * len(columns)) + "|",
    ]
    for row in summary_rows:
        cells = [_escape_cell(row.label), str(row.n)]
        for col in columns:
            iv = row.values.get(col)
            if iv is not None and not _finite(iv.mean) and col in NAN_MEANS:
                cells.append(NAN_MEANS[col])
            else:
                cells.append(_escape_cell(_format_cell(iv, digits)) if iv is not None else MISSING)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- figure


def _error(iv: Interval) -> float:
    return iv.half_width if iv.n >= 2 and _finite(iv.half_width) else 0.0


def plot_summary(summary_rows: list[SummaryRow], path: str | Path, *, title: str = "") -> Path:
    """Two-panel PNG: ToW / ToW-MIA bars per method and RTE vs ToW scatter.

    Left: grouped bars of ``tow`` and ``tow_mia`` per method with 95% CI error bars (when n >= 2),
    y in [0, 1.05].  Right: ``rte`` (x, log scale when all positive) against ``tow`` (y), each point
    annotated with its label.  Series whose metric is absent are skipped.  Uses the object-oriented
    Agg API (no pyplot state) and writes the file atomically.  Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(11.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_bar, ax_sc = fig.subplots(1, 2)
    labels = [r.label for r in summary_rows]
    xs = list(range(len(labels)))

    # left: grouped bars
    series = [("tow", "ToW", "#4C72B0"), ("tow_mia", "ToW-MIA", "#DD8452")]
    present = [
        s for s in series if any(s[0] in r.values and _finite(r.values[s[0]].mean) for r in summary_rows)
    ]
    width = 0.8 / max(len(present), 1)
    for j, (key, name, color) in enumerate(present):
        offset = (j - (len(present) - 1) / 2) * width
        bx, bh, be = [], [], []
        for x, row in zip(xs, summary_rows, strict=True):
            iv = row.values.get(key)
            if iv is None or not _finite(iv.mean):
                continue
            bx.append(x + offset)
            bh.append(iv.mean)
            be.append(_error(iv))
        ax_bar.bar(bx, bh, width=width, yerr=be if any(be) else None, capsize=3, color=color, label=name)
    ax_bar.set_ylim(0.0, 1.05)
    ax_bar.set_xticks(xs)
    ax_bar.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax_bar.set_ylabel("score (1 = retrain)")
    ax_bar.set_title("ToW / ToW-MIA per method (95% CI)")
    if present:
        ax_bar.legend(fontsize=8, loc="lower right")
    else:
        ax_bar.text(0.5, 0.5, "no ToW metrics", ha="center", va="center", transform=ax_bar.transAxes)

    # right: RTE vs ToW scatter
    points = []
    for row in summary_rows:
        rte, tow = row.values.get("rte"), row.values.get("tow")
        if rte is None or tow is None or not (_finite(rte.mean) and _finite(tow.mean)):
            continue
        points.append((row.label, rte.mean, tow.mean, _error(tow)))
    if points:
        px = [p[1] for p in points]
        py = [p[2] for p in points]
        yerr = [p[3] for p in points]
        # ToW CI as vertical bars only: an RTE interval often crosses 0, which a log axis cannot show
        ax_sc.errorbar(
            px,
            py,
            yerr=yerr if any(yerr) else None,
            fmt="o",
            color="#4C72B0",
            ecolor="#999999",
            capsize=2,
        )
        for lab, x, y, _ in points:
            ax_sc.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if all(x > 0 for x in px):
            ax_sc.set_xscale("log")
        ax_sc.set_ylim(0.0, 1.05)
    else:
        ax_sc.text(0.5, 0.5, "no RTE / ToW metrics", ha="center", va="center", transform=ax_sc.transAxes)
    ax_sc.set_xlabel("RTE (unlearn time / retrain time)")
    ax_sc.set_ylabel("ToW")
    ax_sc.set_title("cost vs. closeness to retrain")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    # no Software/date metadata, so identical inputs give identical bytes
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return Path(atomic_write_bytes(path, buffer.getvalue()))


# ----------------------------------------------------------------------------------------------- report


def _legend(columns: Sequence[str]) -> list[str]:
    lines = [
        "- **method**: the row's label; `original` is the model before unlearning, `retrain` (`retain` on TOFU) "
        "is the gold standard trained from scratch without the forget set.",
        "- **n**: number of seeds (rows) aggregated; cells are mean ± half-width of the 95% t-interval over "
        "seeds (no ± when n < 2); `–` = not reported.",
    ]
    for col in columns:
        header, text = COLUMN_INFO.get(
            col, (col, "value reported by the benchmark (no description available)")
        )
        lines.append(f"- **{header}** (`{col}`): {text}.")
    return lines


def _benchmark_tags(benchmark: str) -> dict:
    """The registered benchmark's report hooks: `columns` (its table columns), `figures` (a function
    (rows, run_dir, stem) -> [PNG paths] drawing its own figures, e.g. the Markov curves) and `sections` (a function
    (rows, run_dir, stem) -> Markdown placed under the group's table, e.g. MIMU's per-κ comparison). Unknown -> {}."""
    from unlearnkit._registry import BENCHMARKS

    return BENCHMARKS.get(benchmark).tags if benchmark in BENCHMARKS else {}


def columns_for(benchmark: str, scenario: str) -> Sequence[str]:
    """The benchmark's `columns` tag: a tuple, or a function of the scenario; DEFAULT_COLUMNS when absent."""
    cols = _benchmark_tags(benchmark).get("columns", DEFAULT_COLUMNS)
    return cols(scenario) if callable(cols) else cols


def build_report(run_dir: str | Path, *, columns: Sequence[str] | None = None) -> Path:
    """Rebuild ``<run_dir>/report.md`` (and the PNGs) from ``<run_dir>/results.jsonl``.

    Columns: ``columns`` if given, else the benchmark's registered columns, else ``DEFAULT_COLUMNS``. The ToW
    summary figure is drawn for groups that report ToW; a benchmark's `figures` hook adds its own figures and its
    `sections` hook its own Markdown under the table.
    Raises ``ValueError`` when the file is missing or holds no rows.  Returns the report path.
    """
    run_dir = Path(run_dir)
    results = run_dir / "results.jsonl"
    rows = read_jsonl(results)  # a missing file reads as []
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        raise ValueError(f"no results in {run_dir}/results.jsonl")
    kept = latest_rows(rows)
    group_columns = {key: tuple(columns or columns_for(key[0], key[1]))
                     for key in dict.fromkeys(_group_key(r) for r in kept)}
    summary = {key: srows for cols in dict.fromkeys(group_columns.values())
               for key, srows in summarize([r for r in kept if group_columns[_group_key(r)] == cols], cols).items()}

    run_ids = _sorted_unique(r.get("run_id") for r in kept)
    out = [
        f"# unlearnkit report: {run_dir.name}",
        "",
        f"Rebuilt from `results.jsonl`: {len(rows)} rows, {len(kept)} after dropping superseded re-runs, "
        f"{len(summary)} group(s).",
        "",
    ]
    used_names: set[str] = set()
    for (benchmark, scenario, model), srows in summary.items():
        group_rows = [r for r in kept if _group_key(r) == (benchmark, scenario, model)]
        name = "report-" + "-".join(_slug(p) for p in (benchmark, scenario, model))
        candidate, k = name, 2
        while candidate in used_names:
            candidate, k = f"{name}-{k}", k + 1
        used_names.add(candidate)
        image = f"{candidate}.png"
        heading = f"{benchmark} / {scenario} / {model}"
        cols = group_columns[(benchmark, scenario, model)]
        images = []
        if any("tow" in r.values for r in srows):
            plot_summary(srows, run_dir / image, title=heading)
            images.append(image)
        hook = _benchmark_tags(benchmark).get("figures")
        if hook is not None:
            images += [Path(p).name for p in hook(group_rows, run_dir, candidate)]
        sections = _benchmark_tags(benchmark).get("sections")
        extra = sections(group_rows, run_dir, candidate).strip("\n") if sections is not None else ""
        seeds = _sorted_unique(r.get("seed") for r in group_rows)
        ns = sorted({r.n for r in srows})
        n_text = (
            f"n = {ns[0]} per method"
            if len(ns) == 1
            else f"n = {ns[0]}–{ns[-1]} per method (see the n column)"
        )
        out += [
            f"## {heading}",
            "",
            format_table(srows, cols).rstrip("\n"),
            "",
            f"{n_text}; seeds: {', '.join(str(s) for s in seeds) or MISSING}.",
            "",
            *([extra, ""] if extra else []),
            *[f"![{heading}]({img})\n" for img in images],
        ]
    legend_columns = list(dict.fromkeys(c for cols in group_columns.values() for c in cols))
    out += ["## Columns", "", *_legend(legend_columns), "", "## Runs covered", ""]
    out += [f"- `{rid}`" for rid in run_ids] or [f"- {MISSING}"]
    report = run_dir / "report.md"
    return Path(atomic_write_text(report, "\n".join(out) + "\n"))
