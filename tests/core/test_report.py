"""Tests for ``unlearnkit.report``: de-duplication, aggregation over seeds, tables, figures and report.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from unlearnkit.metrics.stats import format_interval, t_interval
from unlearnkit.report import (
    DEFAULT_COLUMNS,
    build_report,
    format_table,
    latest_rows,
    plot_summary,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_row(
    method: str,
    seed: int,
    *,
    label: str | None = None,
    created: str = "2026-11-22T05:30:00Z",
    run_id: str = "20261122-0530-ab12",
    benchmark: str = "digits",
    scenario: str = "random",
    model: str = "mlp",
    params: dict | None = None,
    metrics: dict | None = None,
    times: dict | None = None,
) -> dict:
    return {
        "run_id": run_id,
        "created": created,
        "benchmark": benchmark,
        "scenario": scenario,
        "model": model,
        "method": method,
        "label": label if label is not None else method,
        "params": params if params is not None else {},
        "seed": seed,
        "seeds": {"train": seed, "unlearn": seed, "eval": seed},
        "metrics": metrics if metrics is not None else {},
        "times": times if times is not None else {},
        "cached": False,
        "split_hash": "split-abc",
        "data_hash": "data-def",
    }


# forget_acc / tow / tow_mia per seed for each method
TOW = {"original": [1.0, 1.0, 1.0], "retrain": [0.9, 0.94, 0.95], "finetune": [0.91, 0.8, 0.86]}
FORGET = {"original": [100.0, 99.5, 99.8], "retrain": [96.0, 95.5, 97.25], "finetune": [98.0, 97.0, 96.5]}


def benchmark_rows() -> list[dict]:
    """Three seeds each of finetune, original and retrain (in that file order); finetune lacks ``mia_svc``."""
    rows = []
    for method in ("finetune", "original", "retrain"):
        for seed in range(3):
            metrics = {
                "forget_acc": FORGET[method][seed],
                "retain_acc": 99.0 + 0.1 * seed,
                "test_acc": 95.0,
                "tow": TOW[method][seed],
                "tow_mia": TOW[method][seed] - 0.05,
            }
            if method != "finetune":
                metrics["mia_svc"] = 0.2 + 0.01 * seed
            times = {"unlearn_s": 0.5 + seed, "retrain_s": 10.0, "rte": (0.5 + seed) / 10.0}
            params = {"lr": 0.01, "epochs": 5} if method == "finetune" else {}
            rows.append(make_row(method, seed, metrics=metrics, times=times, params=params))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- latest_rows


def test_latest_rows_keeps_newer_duplicate_and_file_order() -> None:
    old = make_row("finetune", 0, created="2026-11-22T05:30:00Z", metrics={"tow": 0.5})
    other = make_row("finetune", 1, created="2026-11-22T05:30:00Z", metrics={"tow": 0.7})
    new = make_row("finetune", 0, created="2026-11-22T06:00:00Z", metrics={"tow": 0.9})
    kept = latest_rows([old, other, new])
    assert [r["metrics"]["tow"] for r in kept] == [0.7, 0.9]

    # the newer row wins even when it comes first in the file
    kept = latest_rows([new, other, old])
    assert [r["metrics"]["tow"] for r in kept] == [0.9, 0.7]


def test_latest_rows_tie_keeps_later_row_and_distinct_params_survive() -> None:
    first = make_row("finetune", 0, metrics={"tow": 0.1})
    second = make_row("finetune", 0, metrics={"tow": 0.2})
    # same params in a different key order are still duplicates
    a = make_row("ga", 0, params={"lr": 0.1, "epochs": 2}, metrics={"tow": 0.3})
    b = make_row("ga", 0, params={"epochs": 2, "lr": 0.1}, metrics={"tow": 0.4})
    c = make_row("ga", 0, params={"epochs": 3, "lr": 0.1}, metrics={"tow": 0.5})
    kept = latest_rows([first, second, a, b, c])
    assert [r["metrics"]["tow"] for r in kept] == [0.2, 0.4, 0.5]


# ------------------------------------------------------------------------------------------- summarize


def test_summarize_mean_and_ci_match_scipy_t_interval() -> None:
    summary = summarize(benchmark_rows())
    assert list(summary) == [("digits", "random", "mlp")]
    by_label = {s.label: s for s in summary[("digits", "random", "mlp")]}
    for method, values in TOW.items():
        iv = by_label[method].values["tow"]
        arr = np.asarray(values)
        assert by_label[method].n == 3
        assert iv.n == 3
        assert iv.mean == pytest.approx(arr.mean())
        if arr.std() == 0:
            assert iv.half_width == pytest.approx(0.0)
            continue
        low, high = stats.t.interval(0.95, df=2, loc=arr.mean(), scale=stats.sem(arr))
        assert iv.low == pytest.approx(low)
        assert iv.high == pytest.approx(high)
        assert iv.half_width == pytest.approx((high - low) / 2)
    # time keys come from row["times"]
    rte = by_label["finetune"].values["rte"]
    assert rte.mean == pytest.approx(np.mean([0.05, 0.15, 0.25]))
    # a metric no finetune row reports is absent rather than zero
    assert "mia_svc" not in by_label["finetune"].values
    assert "mia_svc" in by_label["retrain"].values


def test_summarize_orders_original_retrain_first_and_groups_models() -> None:
    rows = [
        make_row("ga", 0, metrics={"tow": 0.3}),
        make_row("finetune", 0, metrics={"tow": 0.4}),
        make_row("retrain", 0, metrics={"tow": 1.0}),
        make_row("ga", 0, model="resnet", metrics={"tow": 0.6}),
        make_row("original", 0, metrics={"tow": 0.2}),
        make_row("original", 0, model="resnet", metrics={"tow": 0.1}),
    ]
    summary = summarize(rows)
    assert list(summary) == [("digits", "random", "mlp"), ("digits", "random", "resnet")]
    assert [s.label for s in summary[("digits", "random", "mlp")]] == [
        "original",
        "retrain",
        "ga",
        "finetune",
    ]
    assert [s.label for s in summary[("digits", "random", "resnet")]] == ["original", "ga"]
    single = summary[("digits", "random", "mlp")][2].values["tow"]
    assert single.n == 1 and single.mean == pytest.approx(0.3) and math.isnan(single.half_width)


# ------------------------------------------------------------------------------------------- format_table


def test_format_table_exact_cells_and_missing_dash() -> None:
    srows = summarize(benchmark_rows())[("digits", "random", "mlp")]
    table = format_table(srows)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["method", "n"]
    assert len(header) == 2 + len(DEFAULT_COLUMNS)
    assert {"ToW ↑", "Avg.Gap ↓", "forget acc", "time (s)", "RTE ↓"} <= set(header)

    cells = {
        row.split("|")[1].strip(): [c.strip() for c in row.strip().strip("|").split("|")] for row in lines[2:]
    }
    assert list(cells) == ["original", "retrain", "finetune"]
    col = {key: 2 + i for i, key in enumerate(DEFAULT_COLUMNS)}
    finetune = cells["finetune"]
    assert finetune[1] == "3"
    assert finetune[col["tow"]] == format_interval(t_interval(TOW["finetune"]), digits=3)
    assert finetune[col["forget_acc"]] == format_interval(t_interval(FORGET["finetune"]), digits=3)
    # the formatted cell carries the mean to 3 decimals and the scipy half-width
    arr = np.asarray(TOW["finetune"])
    low, high = stats.t.interval(0.95, df=2, loc=arr.mean(), scale=stats.sem(arr))
    assert f"{arr.mean():.3f}" in finetune[col["tow"]]
    assert f"{(high - low) / 2:.3f}" in finetune[col["tow"]]
    # metrics that are never reported show the dash
    assert finetune[col["mia_svc"]] == "–"
    assert finetune[col["avg_gap"]] == "–"
    assert cells["retrain"][col["mia_svc"]] != "–"


def test_format_table_unknown_column_uses_key_and_escapes_pipes() -> None:
    rows = [make_row("a|b", 0, metrics={"my_metric": 1.5})]
    table = format_table(summarize(rows, columns=("my_metric",))[("digits", "random", "mlp")], ("my_metric",))
    assert "| method | n | my_metric |" in table
    assert "a\\|b" in table


# ------------------------------------------------------------------------------------------- figure / report


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_summary_tolerates_missing_metrics(tmp_path: Path) -> None:
    rows = [make_row("original", 0, metrics={"forget_acc": 99.0}), make_row("ga", 0, metrics={"tow": 0.4})]
    srows = summarize(rows)[("digits", "random", "mlp")]
    out = plot_summary(srows, tmp_path / "fig.png", title="partial")
    assert out == tmp_path / "fig.png"
    _assert_png(out)
    assert not list(tmp_path.glob("*.tmp*"))


def test_build_report_writes_markdown_and_png_deterministically(tmp_path: Path) -> None:
    rows = benchmark_rows()
    rows.append(make_row("ga", 0, scenario="class", run_id="20261123-0100-cd34", metrics={"tow": 0.5}))
    write_jsonl(tmp_path / "results.jsonl", rows)

    report = build_report(tmp_path)
    assert report == tmp_path / "report.md"
    text = report.read_text(encoding="utf-8")
    first_png = (tmp_path / "report-digits-random-mlp.png").read_bytes()
    _assert_png(tmp_path / "report-digits-random-mlp.png")
    _assert_png(tmp_path / "report-digits-class-mlp.png")
    assert "](report-digits-random-mlp.png)" in text
    assert "](report-digits-class-mlp.png)" in text
    assert "## digits / random / mlp" in text and "## digits / class / mlp" in text
    from unlearnkit.pipelines.classification import report_columns

    cols = report_columns("random")  # the digits benchmark's registered columns for that scenario
    assert format_table(summarize(rows, cols)[("digits", "random", "mlp")], cols).strip() in text
    assert "| Df test acc | Dr test acc |" in text.split("## digits / class / mlp")[1].split("\n\n")[1]
    assert "seeds: 0, 1, 2" in text
    assert "20261122-0530-ab12" in text and "20261123-0100-cd34" in text
    assert "ToW = Π(1 − |acc_u − acc_r|/100)" in text
    for key in DEFAULT_COLUMNS:
        assert f"(`{key}`)" in text  # every column is explained in the legend

    assert build_report(tmp_path).read_text(encoding="utf-8") == text
    assert (tmp_path / "report-digits-random-mlp.png").read_bytes() == first_png


def test_build_report_uses_latest_duplicate(tmp_path: Path) -> None:
    rows = [
        make_row("finetune", 0, created="2026-11-22T05:30:00Z", metrics={"tow": 0.111}),
        make_row("finetune", 0, created="2026-11-22T07:00:00Z", metrics={"tow": 0.777}),
    ]
    write_jsonl(tmp_path / "results.jsonl", rows)
    text = build_report(tmp_path, columns=("tow",)).read_text(encoding="utf-8")
    assert "0.777" in text and "0.111" not in text


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_build_report_empty_results_raises(tmp_path: Path, content: str) -> None:
    (tmp_path / "results.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="no results in"):
        build_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_build_report_missing_results_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="results.jsonl"):
        build_report(tmp_path)


def test_build_report_skips_torn_last_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "results.jsonl", benchmark_rows())
    torn = json.dumps(make_row("ga", 0, metrics={"tow": 0.5}))[:40]
    with path.open("a", encoding="utf-8") as fh:
        fh.write(torn)
    with pytest.warns(UserWarning):
        report = build_report(tmp_path)
    text = report.read_text(encoding="utf-8")
    assert "| finetune | 3 |" in text
    assert "| ga |" not in text
    _assert_png(tmp_path / "report-digits-random-mlp.png")


def test_format_table_uses_g_style_for_tiny_and_huge_values() -> None:
    rows = [
        make_row("ga", seed, metrics={"tiny": v, "huge": h})
        for seed, (v, h) in enumerate([(1e-5, 12345.0), (2e-5, 23456.0), (3e-5, 34567.0)])
    ]
    srows = summarize(rows, columns=("tiny", "huge"))[("digits", "random", "mlp")]
    cells = [c.strip() for c in format_table(srows, ("tiny", "huge")).splitlines()[2].strip("|").split("|")]
    half = t_interval([1e-5, 2e-5, 3e-5]).half_width
    assert cells[2] == f"2e-05 ± {half:.3g}"
    assert cells[3].startswith("2.35e+04 ± ")
