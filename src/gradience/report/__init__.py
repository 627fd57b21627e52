"""`gradience report`: a run (and its adapter audit) as one self-contained HTML page or Markdown.

Public API::

    from gradience.report import build_report, render_html, render_markdown
    rep = build_report("runs/demo/run.jsonl", audit_path="audit.json")
    html = render_html(rep)

The page is static HTML with inline CSS and SVG drawn by :mod:`gradience.report.svg`:
no JavaScript, no network, and it prints. Curves are bucketed in one streaming pass
(:mod:`gradience.report.collect`) so a 100k-step run still gives a small page.
"""

from .audit_view import AuditView, build_audit_view, load_audit_json
from .build import FORMATS, Report, build_report, resolve_output, write_report
from .collect import BucketSeries, Curves, RunData, collect_run
from .html import render_html
from .markdown import render_markdown

__all__ = [
    "FORMATS",
    "AuditView",
    "BucketSeries",
    "Curves",
    "Report",
    "RunData",
    "build_audit_view",
    "build_report",
    "collect_run",
    "load_audit_json",
    "render_html",
    "render_markdown",
    "resolve_output",
    "write_report",
]
