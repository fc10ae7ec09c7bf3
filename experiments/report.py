"""The self-contained HTML report of a run of all steps (figures embedded as base64 PNG).

The page is written through a temporary file and ``os.replace``: a reader (or a crash) never sees a
half-written report.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from experiments._outputs import write_text

MAX_LIST = 12  # list metrics longer than this are shown shortened


@dataclass
class StepResult:
    """How one step went: its name, success, wall time, one-line summary and output folder."""

    name: str
    ok: bool
    seconds: float
    summary: str
    folder: Path
    detail: str = ""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        flat = value
        if len(flat) > MAX_LIST:
            shown = ", ".join(_fmt(v) for v in flat[:MAX_LIST])
            return f"[{shown}, … ({len(flat)} values)]"
        return "[" + ", ".join(_fmt(v) for v in flat) + "]"
    return str(value)


def _step_html(result: StepResult) -> str:
    status = "ok" if result.ok else "FAILED"
    parts = [
        f'<section id="{result.name}"><h2>{html.escape(result.name)} '
        f'<span class="{status.lower()}">{status}</span> <small>{result.seconds:.1f} s</small></h2>'
    ]
    if not result.ok:
        parts.append(f"<pre class='err'>{html.escape(result.detail or result.summary)}</pre></section>")
        return "".join(parts)
    metrics_file = result.folder / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except ValueError as err:  # never written by this version (staged, strict JSON); say so
            metrics = {"unreadable metrics.json": f"{err}; run the step again"}
        if not isinstance(metrics, dict):
            metrics = {"unreadable metrics.json": "not a JSON object; run the step again"}
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in metrics.items()
        )
        parts.append(f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
    for png in sorted(result.folder.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(png.stem)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "".join(parts)


def write_report(results: list[StepResult], path: Path, *, quick: bool, seed: int) -> Path:
    """Write ``path`` (HTML, no external resources) showing every step's metrics and figures."""
    import jax

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick" if quick else "full"
    header = (
        f"<p>{when} · mode {mode} · seed {seed} · jax {jax.__version__} on "
        f"{html.escape(str(jax.devices()[0].device_kind))} · Python {platform.python_version()}</p>"
    )
    toc = "".join(
        f'<li><a href="#{r.name}">{r.name}</a> — {"ok" if r.ok else "FAILED"} '
        f"({r.seconds:.1f} s) <small>{html.escape(r.summary)}</small></li>"
        for r in results
    )
    body = "".join(_step_html(r) for r in results)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
        "font-family:monospace;font-size:12px;text-align:left;vertical-align:top}"
        "figure{display:inline-block;margin:.5em}img{max-width:520px}.ok{color:#080}.failed{color:#c00}"
        ".err{background:#fee;padding:.5em;overflow:auto}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>dlx-jax report</title>"
        f"<style>{style}</style></head><body><h1>dlx-jax: every step</h1>{header}<ol>{toc}</ol>{body}"
        "</body></html>"
    )
    return write_text(path, page)
