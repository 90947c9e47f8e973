"""
What a run tells: the text report (stdout), the JSON file (C{--json}) and
a self-contained HTML page (C{--report}) with three charts, drawn as SVG by
L{heimdall.stress.svg} and inlined (no plotting library, no script).
"""

from __future__ import annotations

import html
import json
from typing import Any, Dict, List, Optional

from heimdall.stress import svg


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


def render_charts(result: Dict[str, Any]) -> Dict[str, str]:
    """
    The three charts as SVG documents (L{heimdall.stress.svg}, no plotting
    library): C{latency_over_time}, C{latency_histogram}, C{backends}
    (absent when no response carried the backend header).
    """
    charts: Dict[str, str] = {
        "latency_over_time": _latency_over_time(result),
        "latency_histogram": _latency_histogram(result),
    }
    if result["backends"]["counts"]:
        charts["backends"] = _backends_chart(result)
    return charts


def _latency_over_time(result: Dict[str, Any]) -> str:
    """
    Two panels sharing the time axis: latency percentiles per interval
    (log scale), and below it the responses per second, stacked by backend,
    so that a failover shows traffic leaving one backend.
    """
    rows = result["timeline"]
    starts = [row["t"] for row in rows]
    widths = [row["width"] for row in rows]
    series = [
        svg.Series("p50", [row["p50_ms"] for row in rows]),
        svg.Series("p99", [row["p99_ms"] for row in rows]),
        svg.Series("max", [row["max_ms"] for row in rows], style="dotted"),
    ]
    stacks = {
        name: [row["backends"].get(name, 0) / row["width"] for row in rows] for name in result["backends"]["counts"]
    }
    tracked = [sum(values) for values in zip(*stacks.values())] if stacks else [0.0] * len(rows)
    # What no header named (rounded: the rate and the counts are floats).
    rest = [round(max(row["rate"] - t, 0.0), 6) for row, t in zip(rows, tracked)]
    scenario = result.get("scenario")
    mark_at = mark_until = None
    if scenario:
        mark_at = scenario["kill"]["at"]
        mark_until = mark_at + scenario["moved_after_s"]
    return svg.time_chart(
        f"Latency and throughput over time (latency from the {result['latency_measured_from']})",
        starts, widths, series, stacks, rest=rest, failed=[row["failed"] for row in rows],
        mark_at=mark_at, mark_until=mark_until,
    )


def _latency_histogram(result: Dict[str, Any]) -> str:
    lat = result["latency_ms"]
    marks = [(label, lat[key]) for key, label in (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9")) if lat.get(key)]
    return svg.histogram_chart("Latency histogram", result["latency_distribution_ms"], marks)


def _backends_chart(result: Dict[str, Any]) -> str:
    backends = result["backends"]
    names = list(backends["counts"])
    return svg.bar_chart(
        "Requests per backend",
        names,
        [backends["percent"][name] for name in names],
        [f"{backends['percent'][name]:.1f}% ({backends['counts'][name]:,})" for name in names],
        x_label=f"share of responses (%), from the {backends['header']} header",
    )


# -- HTML --------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.2em 0.8em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.warning { background: #fff3cd; border: 1px solid #e0c36b; padding: 0.5em 1em; }
.chart svg { max-width: 100%; height: auto; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _table(headers: List[str], rows: List[List[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(result: Dict[str, Any], charts: Optional[Dict[str, str]] = None) -> str:
    """
    The report as one HTML document with C{charts} (SVG documents, by
    default L{render_charts}) inlined.
    """
    if charts is None:
        charts = render_charts(result)
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
    parts.append("<h2>Latency over time</h2>")
    parts.append(f'<div class="chart" id="chart-latency-over-time">{charts["latency_over_time"]}</div>')
    parts.append(
        _table(
            ["t (s)", "req/s", "failed", "p50", "p99", "max"],
            [[f"{row['t']:.0f}", f"{row['rate']:,.0f}", row["failed"], _ms(row["p50_ms"]), _ms(row["p99_ms"]),
              _ms(row["max_ms"])] for row in result["timeline"]],
        )
    )
    parts.append("<h2>Latency histogram</h2>")
    parts.append(f'<div class="chart" id="chart-latency-histogram">{charts["latency_histogram"]}</div>')
    backends = result["backends"]
    parts.append(f"<h2>Backends (from the {e(str(backends['header']))} header)</h2>")
    if backends["counts"]:
        if "backends" in charts:
            parts.append(f'<div class="chart" id="chart-backends">{charts["backends"]}</div>')
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


def write_html(result: Dict[str, Any], path: str) -> None:
    """
    Write the HTML report, charts included.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(html_report(result))
