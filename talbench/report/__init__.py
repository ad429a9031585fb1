"""The benchmark report: run metadata, a summary across datasets, tables in the published layout,
figures, per-class AP and links, as Markdown and as one self-contained HTML page."""

from talbench.report.build import Written, write_report

__all__ = ["Written", "write_report"]
