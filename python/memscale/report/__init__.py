"""HTML reports of benchmark records and plans: per-layer stacked memory bars (before and
after the plan) and measured vs predicted peaks, drawn with matplotlib."""
from .html import write_plan_report, write_results_report

__all__ = ["write_plan_report", "write_results_report"]
