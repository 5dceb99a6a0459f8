"""MIMU report (shared/specs/mimu.md §8), from the rows of `pipelines/mimu.py` (one per evaluated model; the
benchmark's report hooks call these):

- `plot_kappa_curves`: per (dataset, model, forget class, K), each metric against κ: MIMU and random masking (lines
  over κ), SFT and the original (constant: the same model at every κ), mean over seeds with a 95% t-band;
- `comparison_tables`: per (dataset, model) a table with columns MIMU / SFT / Random / Original and a row per
  (κ, metric), mean ± 95% t-interval over seeds (no ± with one seed), in Markdown (returned, for report.md) and
  LaTeX (written as report_<dataset>_<model>.tex, booktabs).

Rows of different settings (another GCN, recipe or baseline hyperparameters in the same directory) are never mixed:
each setting gets its own figures and table, suffixed with its hash when a group has several.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .._io import atomic_write_text
from ..metrics.stats import Interval, t_interval
from .curves import _save

# row metric key, label, digits, the metric's range (the t-bands are clipped to it)
METRICS = (("forget_score", "forget score (%)", 1, (0.0, 100.0)), ("retain_score", "retain score (%)", 1, (0.0, 100.0)),
           ("forget_loss", "forget loss", 3, (0.0, np.inf)), ("retain_loss", "retain loss", 3, (0.0, np.inf)),
           ("forget_prob", "forget-class prob.", 3, (0.0, 1.0)))
# table column / legend -> row method
COLUMNS = (("MIMU", "mimu"), ("SFT", "sft_randomize"), ("Random", "random_mask"), ("Original", "original"))
STYLE = {"mimu": ("#C44E52", "-", "o"), "random_mask": ("#4C72B0", "-", "s"), "sft_randomize": ("#55A868", "-", None),
         "original": ("black", "--", None)}


def _mimu_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """setting hash -> its rows (rows of this benchmark carry a `mimu` dict)."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if isinstance(row.get("mimu"), dict) and isinstance(row.get("metrics"), dict):
            out.setdefault(str(row["mimu"].get("setting")), []).append(row)
    return out


def _values(rows: list[dict], method: str, forget_class: int, top_k: int, kappa: int | None, key: str) -> list[float]:
    """One metric of `method` over seeds; SFT and the original do not depend on K and κ."""
    out = []
    for r in rows:
        m = r["mimu"]
        if r.get("method") != method or m.get("forget_class") != forget_class:
            continue
        if method in ("mimu", "random_mask") and (m.get("top_k") != top_k or m.get("kappa") != kappa):
            continue
        value = r["metrics"].get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(float(value))
    return out


def _grid(rows: list[dict]) -> tuple[list[int], dict[tuple[int, int], list[int]]]:
    """(forget classes, (class, K) -> sorted κ values) of the MIMU rows."""
    grid: dict[tuple[int, int], set[int]] = {}
    for r in rows:
        m = r["mimu"]
        if r.get("method") == "mimu":
            grid.setdefault((m["forget_class"], m["top_k"]), set()).add(m["kappa"])
    classes = sorted({f for f, _ in grid})
    return classes, {key: sorted(kappas) for key, kappas in sorted(grid.items())}


def _cell(iv: Interval | None, digits: int, pm: str) -> str:
    if iv is None or not math.isfinite(iv.mean):
        return "–"
    if iv.n < 2 or not math.isfinite(iv.half_width):
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f}{pm}{iv.half_width:.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-.") or "x"


def _latex_escape(text: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", text).replace("κ", r"$\kappa$")


def _table(rows: list[dict]) -> tuple[list[str], list[list[str | None]], list[list[Interval | None]], list[int]]:
    """(header, the leading cells of each table row, the four intervals of each, digits of each)."""
    classes, grid = _grid(rows)
    several = len(grid) > 1
    header = [*(["class", "K"] if several else []), "κ", "metric", *(name for name, _ in COLUMNS)]
    lead, cells, digits = [], [], []
    for (f, top_k), kappas in grid.items():
        for kappa in kappas:
            for key, name, d, _ in METRICS:
                lead.append([*([str(f), str(top_k)] if several else []), str(kappa), name])
                cells.append([_interval(_values(rows, method, f, top_k, kappa, key)) for _, method in COLUMNS])
                digits.append(d)
    return header, lead, cells, digits


def _interval(values: list[float]) -> Interval | None:
    return t_interval(values) if values else None


def _caption(rows: list[dict]) -> str:
    classes, grid = _grid(rows)
    first = rows[0]
    seeds = sorted({r.get("seed") for r in rows if r.get("seed") is not None})
    what = "" if len(grid) > 1 else f", forget class {classes[0]}, K = {next(iter(grid))[1]}" if grid else ""
    return (f"{first['mimu'].get('dataset', first.get('scenario'))} / {first.get('model')}{what}, strategy "
            f"{first['mimu'].get('strategy')}: mean{' ± 95% t-interval' if len(seeds) > 1 else ''} over "
            f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); test split, forget set = the forget class")


def comparison_tables(rows: list[dict], run_dir: str | Path) -> str:
    """The Markdown comparison table(s) of one (dataset, model) group; writes their LaTeX twins
    report_<dataset>_<model>[_<setting>].tex into run_dir. Returns the Markdown ('' without MIMU rows)."""
    settings = _mimu_rows(rows)
    out = []
    for setting, members in settings.items():
        header, lead, cells, digits = _table(members)
        if not lead:
            continue
        first = members[0]
        name = f"report_{_slug(first['mimu'].get('dataset'))}_{_slug(first.get('model'))}"
        name += f"_{setting}" if len(settings) > 1 else ""
        md = [f"**MIMU vs. baselines** — {_caption(members)}. LaTeX: `{name}.tex`.", "",
              "| " + " | ".join(header) + " |",
              "|" + "|".join(" ---: " if h not in ("metric",) else " --- " for h in header) + "|"]
        md += ["| " + " | ".join([*left, *(_cell(iv, d, " ± ") for iv in ivs)]) + " |"
               for left, ivs, d in zip(lead, cells, digits, strict=True)]
        out.append("\n".join(md))
        tex = [f"% {_caption(members)}", r"% needs \usepackage{booktabs}",
               r"\begin{tabular}{" + "r" * (len(header) - 5) + "l" + "r" * 4 + "}", r"\toprule",
               " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
        previous = None
        for left, ivs, d in zip(lead, cells, digits, strict=True):
            if previous is not None and left[:-1] != previous:
                tex.append(r"\addlinespace")
            previous = left[:-1]
            tex.append(" & ".join([*(_latex_escape(c) for c in left), *(_cell(iv, d, r" $\pm$ ") for iv in ivs)])
                       + r" \\")
        tex += [r"\bottomrule", r"\end{tabular}", ""]
        atomic_write_text(Path(run_dir) / f"{name}.tex", "\n".join(tex))
    return "\n\n".join(out)


def plot_kappa_curves(rows: list[dict], run_dir: str | Path, stem: str) -> list[Path]:
    """<stem>-class<f>-top<K>[-<setting>].png per (forget class, K): the five metrics against κ (module docstring).
    Returns the paths."""
    from matplotlib.figure import Figure

    settings = _mimu_rows(rows)
    paths = []
    for setting, members in settings.items():
        _, grid = _grid(members)
        for (f, top_k), kappas in grid.items():
            fig = Figure(figsize=(13, 7))
            axes = [fig.add_subplot(2, 3, i + 1) for i in range(len(METRICS))]
            x = np.array(kappas, dtype=float)
            for ax, (key, name, _, (low, high)) in zip(axes, METRICS, strict=True):
                for label, method in COLUMNS:
                    color, line, marker = STYLE[method]
                    ivs = [_interval(_values(members, method, f, top_k, k, key)) for k in kappas]
                    if all(iv is None for iv in ivs):
                        continue
                    mean = np.array([np.nan if iv is None else iv.mean for iv in ivs])
                    half = np.array([0.0 if iv is None or not math.isfinite(iv.half_width) else iv.half_width
                                     for iv in ivs])
                    ax.plot(x, mean, color=color, linestyle=line, marker=marker, label=label, linewidth=1.5)
                    if half.any():
                        ax.fill_between(x, np.clip(mean - half, low, high), np.clip(mean + half, low, high),
                                        color=color, alpha=0.15, linewidth=0)
                ax.set_xlabel("κ (weights zeroed)")
                ax.set_title(name)
            handles, labels = axes[0].get_legend_handles_labels()
            legend_ax = fig.add_subplot(2, 3, 6)
            legend_ax.axis("off")
            legend_ax.legend(handles, labels, loc="center", fontsize=11)
            seeds = sorted({r.get("seed") for r in members})
            first = members[0]
            fig.suptitle(f"MIMU on {first['mimu'].get('dataset')} / {first.get('model')}: forget class {f}, K = "
                         f"{top_k} (mean over {len(seeds)} seed(s)" + (", 95% t-band)" if len(seeds) > 1 else ")"))
            fig.subplots_adjust(hspace=0.35, wspace=0.3)
            suffix = f"-{setting}" if len(settings) > 1 else ""
            paths.append(_save(fig, Path(run_dir) / f"{stem}-class{f}-top{top_k}{suffix}.png"))
    return paths


__all__ = ["comparison_tables", "plot_kappa_curves"]
