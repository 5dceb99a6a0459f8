"""Reports rebuilt from a run's ``results.jsonl``: comparison tables, figures and ``report.md``."""

from unlearnkit.report.markdown import (
    COLUMN_INFO,
    DEFAULT_COLUMNS,
    SummaryRow,
    build_report,
    column_header,
    columns_for,
    format_table,
    latest_rows,
    plot_summary,
    summarize,
)

__all__ = [
    "COLUMN_INFO",
    "DEFAULT_COLUMNS",
    "SummaryRow",
    "build_report",
    "column_header",
    "columns_for",
    "format_table",
    "latest_rows",
    "plot_summary",
    "summarize",
]
