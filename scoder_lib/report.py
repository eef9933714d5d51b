"""HTML rendering of executed notebooks and the run's index page."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from .io import read_json, write_text
from .stages import MARKER, STAGES, run_dir, run_profile, stage_dir, stage_id

HEADLINE_METRICS = 8  # metrics shown per stage on the index; the rest are in the stage report


def render_html(notebook: Path, out: Path, hide_code: bool = False) -> Path:
    """Executed notebook -> standalone HTML (images are embedded by the notebook outputs)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(template_name="lab", exclude_input=hide_code, exclude_input_prompt=hide_code,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    write_text(out, _offline(body))
    return out


_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', re.S)


def _offline(html_text: str) -> str:
    """Drop the template's CDN scripts (require.js, MathJax): reports must open offline without
    errors, and no notebook here renders math or widgets."""
    return _REMOTE_SCRIPT.sub("", html_text)


def _instances(run: str) -> list[tuple[str, int | None]]:
    """Stages in order, iteration stages for every iter_<t> folder present or planned."""
    plan = run_dir(run) / ".stamps" / "plan.mk"
    iterations = int(plan.read_text().split(":=")[1]) if plan.exists() else 0
    found = sorted(int(p.name.split("_")[1]) for p in run_dir(run).glob("iter_*") if p.name.split("_")[1].isdigit())
    its = sorted(set(range(1, iterations + 1)) | set(found))
    out: list[tuple[str, int | None]] = []
    for sd in STAGES:
        if sd.per_iteration:
            continue
        if sd.key == "05_final":
            out += [(k, t) for t in its for k in ("03_sample_score", "04_influence")]
        out.append((sd.key, None))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _stage_block(run: str, key: str, it: int | None, reports: Path) -> str:
    folder = stage_dir(run, key, it)
    name = f"{key}_iter{it}" if it is not None else key
    report = reports / f"{name}.html"
    done = (folder / MARKER).exists()
    status = "done" if done else ("failed" if report.exists() else "not run")
    title = html.escape(stage_id(key, it))
    link = f'<a href="{name}.html">{title}</a>' if report.exists() else title
    parts = [f'<section class="stage {status.replace(" ", "-")}"><h2>{link} <span class="status">{status}</span>']
    if done:
        marker = read_json(folder / MARKER)
        wall = marker.get("runner_wall_s", marker.get("notebook_wall_s"))
        parts.append(f' <span class="wall">{_fmt(wall)} s</span>')
    parts.append("</h2>")
    metrics_path = folder / "metrics.json"
    if metrics_path.exists():
        metrics = read_json(metrics_path)
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                       for k, v in list(metrics.items())[:HEADLINE_METRICS])
        parts.append(f"<table>{rows}</table>")
    for fig in sorted((folder / "figures").glob("*.png"))[:4]:
        rel = os.path.relpath(fig, reports)
        parts.append(f'<a href="{rel}"><img src="{rel}" alt="{html.escape(fig.stem)}" width="320"></a>')
    parts.append("</section>")
    return "".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0}.sub{color:#666}section{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
section.done{border-left:6px solid #2a9d57}section.failed{border-left:6px solid #c0392b}
section.not-run{border-left:6px solid #bbb;color:#888}.status,.wall{font-size:.7em;color:#666;font-weight:normal}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}td{padding:.1em .8em .1em 0}
img{border:1px solid #eee;margin:.3em .3em 0 0}.summary{background:#f7f9fb;padding:1em;border-radius:6px}"""


def write_index(run: str) -> Path:
    """outputs/<run>/reports/index.html: the study summary (if built) and every stage's report."""
    reports = run_dir(run) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    summary = run_dir(run) / "07_report" / "summary.html"
    head = summary.read_text(encoding="utf-8") if summary.exists() else ""
    blocks = "".join(_stage_block(run, k, it, reports) for k, it in _instances(run))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>SCoder study: {html.escape(run)}</title>"
            f"<style>{_CSS}</style></head><body><h1>SCoder study: run <code>{html.escape(run)}</code></h1>"
            f"<p class='sub'>profile <code>{html.escape(run_profile(run))}</code>; every stage's report, "
            f"headline metrics and figures.</p>"
            f"{('<div class=summary>' + head + '</div>') if head else ''}{blocks}</body></html>")
    out = reports / "index.html"
    write_text(out, page)
    return out
