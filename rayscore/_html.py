"""The run report as a page: ``_rayscore_report.html`` beside ``_rayscore_report.json``.

Drawn from the JSON report alone (its ``timeline``): the job's figures, its
throughput over time, and one lane per actor (model load, scoring, idle,
restarts) under a lane of the job's stages, so that a starved pool, a slow
load or a straggler shows at a glance. Plotly draws it; its JavaScript is
inlined, so the page opens offline (about 4.5 MB). Cost: about a second at
the commit.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["render", "HTML_NAME", "summary_rows"]

HTML_NAME = "_rayscore_report.html"
BUSY = 0.5  # a bucket in which an actor scored at least this share of the time is "scoring"; less, "partly busy"
COLORS = {"load": "#f0a030", "scoring": "#2a9d5c", "partly busy": "#a8dcb9", "idle": "#d9d9d9", "restart": "#d62728"}


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The job's figures as (label, value) rows: what the page's table and ``rayscore report`` print."""
    s = report.get("seconds", {})
    actors = report.get("actors") or {}
    loads = report.get("actor_loads", [])
    rows = [
        ("output", str(report.get("output") or "")),
        ("rows in", f"{report.get('rows_in', 0):,}"),
        ("rows out", f"{report.get('rows_out', 0):,}"),
        ("rows quarantined", f"{report.get('rows_quarantined', 0):,}"),
        ("rows/s (predict stage)", f"{report.get('rows_per_second', 0):,.1f}"),
        (
            "model",
            f"{report.get('model_uri', '')} ({report.get('model_format', '')}, {report.get('model_bytes', 0):,} bytes)",
        ),
        (
            "actors",
            f"{actors.get('min', '?')}-{actors.get('max', '?')}, {report.get('model_loads', 0)} model load(s) "
            f"on {report.get('nodes', 0)} node(s)",
        ),
        ("slowest model load", f"{s.get('load', 0.0):.1f} s"),
        ("first prediction at", f"{s.get('first_prediction', 0.0):.1f} s"),
        ("done at", f"{s.get('total', 0.0):.1f} s"),
    ]
    rows += [(f"stage {k}", f"{s[k]:.1f} s") for k in ("startup", "read_convert", "predict", "write") if k in s]
    if loads:
        rows.append(("largest actor peak memory", f"{max(a.get('peak_rss', 0) for a in loads) / 2**30:.2f} GiB"))
    if report.get("shards"):
        sh = report["shards"]
        rows.append(("shards", f"{sh.get('scored', 0)} scored, {sh.get('reused', 0)} reused, of {sh.get('total', 0)}"))
    return rows


def _runs(kinds: list[str]) -> Iterator[tuple[str, int, int]]:
    """(kind, first, end) for each run of equal neighbours."""
    start = 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            yield kinds[start], start, i
            start = i


def lanes(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bars of the lanes chart, in seconds from the job's start: ``{lane, kind, start, end}``.

    Spark's lane holds the run's stages; each actor's lane its processes'
    model loads, their restarts, and their buckets of scoring (busy at least
    half the bucket), partly busy, or idle.
    """
    t = report.get("timeline") or {}
    began, width = t.get("job_began", t.get("origin", 0.0)), t.get("bucket_s", 1.0)
    origin = t.get("origin", began) - began
    bars = [{"lane": "Spark", "kind": st["name"], "start": st["start"], "end": st["end"]} for st in t.get("stages", [])]
    for actor in t.get("actors", []):
        lane = f"actor {actor['name'].rsplit('-', 1)[-1]} · node {actor['node'][:8]}"
        start = actor["started"] - began
        loaded = actor["loaded"] - began if actor.get("loaded") else None
        if actor.get("restart"):
            bars.append({"lane": lane, "kind": "restart", "start": start, "end": start})
        bars.append({"lane": lane, "kind": "load", "start": start, "end": loaded if loaded is not None else start})
        busy = t.get("busy", {}).get(actor.get("key", str(actor["pid"])), [])
        if loaded is None:
            continue
        first = max(int((loaded - origin) // width), 0)
        kinds = ["scoring" if b >= BUSY * width else "partly busy" if b > 0 else "idle" for b in busy[first:]]
        for kind, a, b in _runs(kinds):
            lo = max(origin + (first + a) * width, loaded)
            bars.append({"lane": lane, "kind": kind, "start": lo, "end": origin + (first + b) * width})
    return bars


def throughput(report: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """(bucket start in seconds from the job's start, rows/s of the whole pool) per bucket."""
    t = report.get("timeline") or {}
    rows = list(t.get("rows", {}).values())
    if not rows:
        return [], []
    width = t.get("bucket_s", 1.0)
    origin = t.get("origin", 0.0) - t.get("job_began", t.get("origin", 0.0))
    n = max(len(r) for r in rows)
    total = [sum(r[i] for r in rows if i < len(r)) for i in range(n)]
    return [round(origin + i * width, 3) for i in range(n)], [round(v / width, 1) for v in total]


def _figure(report: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go  # noqa: PLC0415
    from plotly.subplots import make_subplots  # noqa: PLC0415

    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.35, 0.65],
        subplot_titles=("Rows scored per second (all actors)", "Stages and actors"),
    )
    x, y = throughput(report)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name="rows/s", showlegend=False), row=1, col=1)
    bars = lanes(report)
    order = ["Spark", *dict.fromkeys(b["lane"] for b in bars if b["lane"] != "Spark")]
    shown: set[str] = set()
    for kind in dict.fromkeys(b["kind"] for b in bars):
        mine = [b for b in bars if b["kind"] == kind]
        if kind == "restart":
            fig.add_trace(
                go.Scatter(
                    x=[b["start"] for b in mine],
                    y=[b["lane"] for b in mine],
                    mode="markers",
                    marker={"symbol": "x", "size": 14, "color": COLORS["restart"]},
                    name="restart",
                ),
                row=2,
                col=1,
            )
            continue
        fig.add_trace(
            go.Bar(
                base=[b["start"] for b in mine],
                x=[max(b["end"] - b["start"], 0.05) for b in mine],
                y=[b["lane"] for b in mine],
                orientation="h",
                name=kind,
                marker_color=COLORS.get(kind),
                showlegend=kind not in shown,
                hovertemplate=f"{kind}: %{{base:.1f}} s + %{{x:.1f}} s<extra></extra>",
            ),
            row=2,
            col=1,
        )
        shown.add(kind)
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(order)), row=2, col=1)
    fig.update_yaxes(title_text="rows/s", row=1, col=1)
    fig.update_xaxes(title_text="seconds since the job started", row=2, col=1)
    fig.update_layout(barmode="overlay", height=320 + 40 * len(order), margin={"t": 40, "l": 10, "r": 10})
    return fig


def render(report: Mapping[str, Any]) -> str:
    """The whole page for ``report`` (the JSON run report as a dict), self-contained."""
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(report))
    chart = _figure(report).to_html(full_html=False, include_plotlyjs=True, div_id="rayscore-timeline")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rayscore run report</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
th,td{{text-align:left;padding:2px 12px 2px 0}} th{{font-weight:600;color:#444}}</style></head>
<body><h1>rayscore run report</h1>
<table id="rayscore-summary">
{table}
</table>
{chart}
</body></html>
"""
