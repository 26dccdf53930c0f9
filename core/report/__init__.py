"""Plan reports: self-contained HTML (PNG pictures from numpy + zlib, DVH as inline SVG)."""

from core.report.html import write_report

__all__ = ["write_report"]
