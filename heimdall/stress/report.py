"""
What a run tells: the text report (stdout), the JSON file (C{--json}) and
a self-contained HTML page (C{--report}) with three charts, drawn with
matplotlib (the optional extra C{pip install 'heimdall[report]'}) and
inlined as SVG.  Without matplotlib the page has the same tables and says
how to get the charts.
"""

from __future__ import annotations

import html
import io
import json
from typing import Any, Dict, List, Optional

CHARTS_MISSING = (
    "Charts need matplotlib, which is not installed. "
    "Install it with: pip install 'heimdall[report]' (or pip install matplotlib), then run again."
)


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.3f} ms"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"  # pragma: no cover


def describe_mode(result: Dict[str, Any]) -> str:
    if result["mode"] == "open":
        mode = f"open loop at {result['rate']:,g} req/s"
    else:
        mode = "closed loop"
    return (
        f"{mode}, {result['connections']} connection{'s' if result['connections'] != 1 else ''}, "
        f"{result['workers']} worker{'s' if result['workers'] != 1 else ''}, "
        f"keep-alive {'on' if result['keep_alive'] else 'off'}"
    )


def text_report(result: Dict[str, Any]) -> str:
    """
    The human-readable summary printed at the end of a run.
    """
    lat = result["latency_ms"]
    lines: List[str] = []
    add = lines.append
    add(f"heimdall stress: {result['method']} {result['target']}")
    add(f"  {describe_mode(result)}")
    add("")
    add(
        f"  requests      {result['requests']:,} in {result['duration_s']:.2f} s, "
        f"{result['requests_per_second']:,.1f} req/s"
    )
    add(f"  received      {_bytes(result['bytes_received'])}")
    add(f"  latency       (measured from the {result['latency_measured_from']})")
    add(
        "    "
        + "  ".join(
            f"{label} {_ms(lat[key])}"
            for label, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99_9"), ("max", "max"))
        )
    )
    add(f"    min {_ms(lat['min'])}  mean {_ms(lat['mean'])}  stdev {_ms(lat['stdev'])}")
    codes = result["status_codes"]
    add("  status codes  " + ("  ".join(f"{code}: {count:,}" for code, count in codes.items()) or "none"))
    errors = result["errors"]
    if result["errors_total"]:
        add("  errors        " + "  ".join(f"{kind} {count:,}" for kind, count in errors.items() if count))
    else:
        add("  errors        none")
    if result["unsent"]:
        add(f"  never sent    {result['unsent']:,} (scheduled, but the run ended first)")
    backends = result["backends"]
    if backends["counts"]:
        add(f"  backends      (from the {backends['header']} header)")
        width = max(len(name) for name in backends["counts"])
        for name, count in backends["counts"].items():
            percent = backends["percent"][name]
            bar = "#" * int(round(percent / 2.5))
            add(f"    {name:<{width}}  {count:>10,}  {percent:6.2f}%  {bar}")
    cpu = result["cpu"]
    busy = ", ".join(f"{c['busy']:.0%}" for c in cpu["workers"])
    add(f"  generator CPU {busy} of a core per worker ({cpu['cores']} cores here)")
    scenario = result.get("scenario")
    if scenario:
        lines.extend(_scenario_lines(scenario))
    for warning in result["warnings"]:
        add(f"  WARNING: {warning}")
    return "\n".join(lines) + "\n"


def _scenario_lines(scenario: Dict[str, Any]) -> List[str]:
    kill = scenario["kill"]
    lines = ["", f"  failover      at {kill['at']:.2f} s: {kill['action']}"]
    if kill.get("error"):
        lines.append(f"    the kill failed: {kill['error']}")
    if scenario["killed_backend"]:
        served = "served traffic before" if scenario["killed_backend_served_before_kill"] else "served nothing before"
        lines.append(f"    killed backend {scenario['killed_backend']} ({served} the kill)")
    moved = scenario["moved_after_s"]
    settled = "" if scenario["settled"] else " (not settled: it went on until the end of the run)"
    lines.append(f"    traffic fully moved {moved * 1000:.0f} ms after the kill{settled}")
    if scenario.get("killed_backend_returned_at_s") is not None:
        lines.append(f"    the killed backend answered again from {scenario['killed_backend_returned_at_s']:.2f} s "
                     "(restarted)")
    for name in ("before", "during", "after"):
        phase = scenario["phases"][name]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(phase["failures"].items()))
        lines.append(
            f"    {name:<7} {phase['from_s']:7.2f}-{phase['to_s']:.2f} s  failed {phase['failed']:,}"
            + (f" ({kinds})" if kinds else "")
        )
    lines.append(f"    result: {'PASS, no failed request' if scenario['passed'] else 'FAIL'}")
    return lines


def write_json(result: Dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")


# -- charts ----------------------------------------------------------------------


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_charts(result: Dict[str, Any], fmt: str = "svg") -> Dict[str, bytes]:
    """
    The three charts as C{fmt} (svg or png) bytes: C{latency_over_time},
    C{latency_histogram}, C{backends} (absent when there is no backend
    header).  Raises ImportError without matplotlib.
    """
    import matplotlib
    from matplotlib.figure import Figure

    # Text stays text in the SVG (smaller, searchable), drawn with the
    # reader's sans-serif font.
    matplotlib.rcParams["svg.fonttype"] = "none"

    charts: Dict[str, bytes] = {}
    charts["latency_over_time"] = _save(_latency_over_time(Figure, result), fmt)
    charts["latency_histogram"] = _save(_latency_histogram(Figure, result), fmt)
    if result["backends"]["counts"]:
        charts["backends"] = _save(_backends_chart(Figure, result), fmt)
    return charts


def _save(figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, bbox_inches="tight", dpi=110)
    return buffer.getvalue()


def _latency_over_time(Figure, result):
    """
    Two panels sharing the time axis: latency percentiles per interval
    (log scale), and below it the responses per second, stacked by backend,
    so that a failover shows traffic leaving one backend.
    """
    from matplotlib.ticker import FuncFormatter

    rows = result["timeline"]
    figure = Figure(figsize=(9, 5.4))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    times = [row["t"] + row["width"] / 2 for row in rows]  # mid-interval, over its bar
    for key, label, style in (("p50_ms", "p50", "-"), ("p99_ms", "p99", "-"), ("max_ms", "max", ":")):
        values = [row[key] if row[key] is not None else float("nan") for row in rows]
        top.plot(times, values, style, label=label, marker="o", markersize=3)
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    top.grid(True, which="both", alpha=0.3)
    failed = [(t, row["failed"]) for t, row in zip(times, rows) if row["failed"]]
    if failed:
        ceiling = max((row["max_ms"] or 0 for row in rows), default=1) or 1
        top.scatter([t for t, _ in failed], [ceiling] * len(failed), marker="x", color="red",
                    label="failed requests", zorder=5)
    top.set_title(f"Latency and throughput over time (latency from the {result['latency_measured_from']})",
                  fontsize=10)
    starts = [row["t"] for row in rows]
    widths = [row["width"] * 0.92 for row in rows]
    names = list(result["backends"]["counts"])
    if names:
        base = [0.0] * len(rows)
        for name in names:
            heights = [row["backends"].get(name, 0) / row["width"] for row in rows]
            bottom.bar(starts, heights, width=widths, bottom=base, align="edge", label=name)
            base = [b + h for b, h in zip(base, heights)]
        untracked = [max(row["rate"] - b, 0) for row, b in zip(rows, base)]
        if any(untracked):
            bottom.bar(starts, untracked, width=widths, bottom=base, align="edge", color="lightgray",
                       label="(no header)")
        bottom.legend(loc="lower left", fontsize=7, ncol=min(len(names) + 1, 4))
    else:
        bottom.bar(starts, [row["rate"] for row in rows], width=widths, align="edge", color="gray")
    bottom.set_ylabel("responses/s")
    bottom.set_xlabel("seconds since start")
    bottom.grid(True, axis="y", alpha=0.3)
    scenario = result.get("scenario")
    if scenario:
        kill_at = scenario["kill"]["at"]
        moved = kill_at + scenario["moved_after_s"]
        for axis in (top, bottom):
            axis.axvline(kill_at, color="red", linestyle="--", label="kill" if axis is top else None)
            axis.axvspan(kill_at, max(moved, kill_at + 0.05), color="red", alpha=0.08)
    top.legend(loc="upper right", fontsize=8)
    return figure


def _latency_histogram(Figure, result):
    figure = Figure(figsize=(9, 3.2))
    axis = figure.add_subplot(1, 1, 1)
    bins = result["latency_distribution_ms"]
    if bins:
        lows = [b[0] for b in bins]
        widths = [b[1] - b[0] for b in bins]
        axis.bar(lows, [b[2] for b in bins], width=widths, align="edge", edgecolor="white")
        axis.set_xscale("log")
    lat = result["latency_ms"]
    for key, label in (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9")):
        if lat.get(key):
            axis.axvline(lat[key], linestyle="--", linewidth=1, color="black", alpha=0.6)
            axis.annotate(label, (lat[key], 1), xycoords=("data", "axes fraction"), fontsize=8,
                          rotation=90, va="top", ha="right")
    axis.set_xlabel("latency (ms, log scale)")
    axis.set_ylabel("requests")
    axis.set_title("Latency histogram", fontsize=10)
    axis.grid(True, axis="y", alpha=0.3)
    return figure


def _backends_chart(Figure, result):
    backends = result["backends"]
    names = list(backends["counts"])
    figure = Figure(figsize=(9, max(1.6, 0.45 * len(names) + 0.8)))
    axis = figure.add_subplot(1, 1, 1)
    percents = [backends["percent"][name] for name in names]
    bars = axis.barh(names, percents, color="#4c72b0")
    for bar, name in zip(bars, names):
        axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                  f" {backends['percent'][name]:.1f}% ({backends['counts'][name]:,})", va="center", fontsize=8)
    axis.set_xlabel(f"share of responses (%), from the {backends['header']} header")
    axis.set_xlim(0, max(percents + [1]) * 1.25)
    axis.invert_yaxis()
    axis.set_title("Requests per backend", fontsize=10)
    return figure


# -- HTML --------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.2em 0.8em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.warning { background: #fff3cd; border: 1px solid #e0c36b; padding: 0.5em 1em; }
.note { background: #eef4ff; border: 1px solid #9db7e8; padding: 0.5em 1em; }
.chart svg { max-width: 100%; height: auto; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _table(headers: List[str], rows: List[List[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline_svg(data: bytes) -> str:
    text = data.decode("utf-8")
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def html_report(result: Dict[str, Any], charts: Optional[Dict[str, bytes]] = None) -> str:
    """
    The report as one HTML document; C{charts} (SVG) are inlined, else a
    note says how to get them.
    """
    e = html.escape
    lat = result["latency_ms"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>heimdall stress: {e(result['target'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>heimdall stress: {e(result['method'])} {e(result['target'])}</h1>",
        f"<p>{e(describe_mode(result))}; {result['duration_s']:.2f} s; latency measured from the "
        f"{e(result['latency_measured_from'])}.</p>",
    ]
    for warning in result["warnings"]:
        parts.append(f'<p class="warning">{e(warning)}</p>')
    parts.append("<h2>Summary</h2>")
    parts.append(
        _table(
            ["requests", "req/s", "failed", "p50", "p90", "p99", "p99.9", "max"],
            [[f"{result['requests']:,}", f"{result['requests_per_second']:,.1f}", f"{result['failed']:,}",
              _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]), _ms(lat["p99_9"]), _ms(lat["max"])]],
        )
    )
    parts.append(_table(["status", "count"], [[k, f"{v:,}"] for k, v in result["status_codes"].items()]))
    parts.append(_table(["error", "count"], [[k, f"{v:,}"] for k, v in result["errors"].items()]))
    if charts is None:
        parts.append(f'<p class="note">{e(CHARTS_MISSING)}</p>')
    parts.append("<h2>Latency over time</h2>")
    if charts:
        parts.append(f'<div class="chart" id="chart-latency-over-time">{_inline_svg(charts["latency_over_time"])}</div>')
    parts.append(
        _table(
            ["t (s)", "req/s", "failed", "p50", "p99", "max"],
            [[f"{row['t']:.0f}", f"{row['rate']:,.0f}", row["failed"], _ms(row["p50_ms"]), _ms(row["p99_ms"]),
              _ms(row["max_ms"])] for row in result["timeline"]],
        )
    )
    parts.append("<h2>Latency histogram</h2>")
    if charts:
        parts.append(f'<div class="chart" id="chart-latency-histogram">{_inline_svg(charts["latency_histogram"])}</div>')
    backends = result["backends"]
    parts.append(f"<h2>Backends (from the {e(str(backends['header']))} header)</h2>")
    if backends["counts"]:
        if charts and "backends" in charts:
            parts.append(f'<div class="chart" id="chart-backends">{_inline_svg(charts["backends"])}</div>')
        parts.append(
            _table(
                ["backend", "responses", "share"],
                [[name, f"{count:,}", f"{backends['percent'][name]:.2f}%"] for name, count in backends["counts"].items()],
            )
        )
    else:
        parts.append("<p>No response carried the header.</p>")
    if result.get("scenario"):
        parts.append("<h2>Failover</h2>")
        parts.append(f"<pre>{e(chr(10).join(_scenario_lines(result['scenario'])))}</pre>")
    cpu = result["cpu"]
    parts.append("<h2>Generator</h2>")
    parts.append(
        _table(
            ["worker", "CPU s", "wall s", "busy"],
            [[c["worker"], c["cpu_seconds"], c["wall_seconds"], f"{c['busy']:.0%}"] for c in cpu["workers"]],
        )
    )
    parts.append(f"<h2>Text report</h2><pre>{e(text_report(result))}</pre>")
    parts.append(f"<p>heimdall stress {e(result['version'])}</p></body></html>")
    return "\n".join(parts) + "\n"


def write_html(result: Dict[str, Any], path: str) -> bool:
    """
    Write the HTML report; returns whether charts were included.
    """
    try:
        charts: Optional[Dict[str, bytes]] = render_charts(result, "svg")
    except ImportError:
        charts = None
    with open(path, "w", encoding="utf-8") as f:
        f.write(html_report(result, charts))
    return charts is not None
