"""HTML rendering of executed notebooks and the run's index page."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import HTMLExporter

from scoder_lib.core.io import read_json, write_text
from scoder_lib.core.run import MARKER, Run, StageRef
from scoder_lib.pipeline.engines import one_line

HEADLINE_METRICS = 8  # metrics shown per stage on the index; the rest are in the stage report


def render_html(notebook: Path, out: Path, hide_code: bool = False) -> Path:
    """Executed notebook -> standalone HTML (images are embedded by the notebook outputs)."""
    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(
        template_name="lab", exclude_input=hide_code, exclude_input_prompt=hide_code, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nb)
    write_text(out, _offline(body))
    return out


_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', re.S)


def _offline(html_text: str) -> str:
    """Drop the template's CDN scripts (require.js, MathJax): reports must open offline without
    errors, and no notebook here renders math or widgets."""
    return _REMOTE_SCRIPT.sub("", html_text)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _stage_block(run: Run, ref: StageRef) -> str:
    folder = run.stage_dir(ref.key, ref.iteration)
    report = run.report(ref)
    done = (folder / MARKER).exists()
    status = "done" if done else ("failed" if report.exists() else "not run")
    title = html.escape(ref.id)
    link = f'<a href="{report.name}">{title}</a>' if report.exists() else title
    parts = [f'<section class="stage {status.replace(" ", "-")}"><h2>{link} <span class="status">{status}</span>']
    if done:
        parts.append(f' <span class="wall">{_fmt(run.wall_s(ref))} s</span>')
    parts.append("</h2>")
    marker = read_json(folder / MARKER) if done else {}
    if marker.get("shared_from"):
        src = marker["shared_from"]
        parts.append(
            f'<p class="wall">taken from run <code>{html.escape(src["run"])}</code> (profile '
            f"{html.escape(str(src['profile']))}; the same settings): its files, linked</p>"
        )
    if marker.get("engines"):
        parts.append(f'<p class="wall">ran with: {html.escape(one_line(marker["engines"]))}</p>')
    if marker.get("isolation"):
        parts.append(f'<p class="wall">untrusted code ran under: {html.escape(marker["isolation"])}</p>')
    metrics = run.metrics(ref.key, ref.iteration)
    if metrics:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in list(metrics.items())[:HEADLINE_METRICS]
        )
        parts.append(f"<table>{rows}</table>")
    for fig in sorted((folder / "figures").glob("*.png"))[:4]:
        rel = os.path.relpath(fig, run.reports)
        parts.append(f'<a href="{rel}"><img src="{rel}" alt="{html.escape(fig.stem)}" width="320"></a>')
    parts.append("</section>")
    return "".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0}.sub{color:#666}section{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
section.done{border-left:6px solid #2a9d57}section.failed{border-left:6px solid #c0392b}
section.not-run{border-left:6px solid #bbb;color:#888}.status,.wall{font-size:.7em;color:#666;font-weight:normal}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}td{padding:.1em .8em .1em 0}
img{border:1px solid #eee;margin:.3em .3em 0 0}.summary{background:#f7f9fb;padding:1em;border-radius:6px}"""


def write_index(run: Run) -> Path:
    """outputs/<run>/reports/index.html: the study summary (if built) and every stage's report."""
    run.reports.mkdir(parents=True, exist_ok=True)
    summary = run.stage_dir("07_report") / "summary.html"
    head = summary.read_text(encoding="utf-8") if summary.exists() else ""
    blocks = "".join(_stage_block(run, ref) for ref in run.instances)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>SCoder study: {html.escape(run.name)}</title>"
        f"<style>{_CSS}</style></head><body><h1>SCoder study: run <code>{html.escape(run.name)}</code></h1>"
        f"<p class='sub'>profile <code>{html.escape(run.profile)}</code>; every stage's report, "
        f"headline metrics and figures.</p>"
        f"{('<div class=summary>' + head + '</div>') if head else ''}{blocks}</body></html>"
    )
    out = run.reports / "index.html"
    write_text(out, page)
    return out
