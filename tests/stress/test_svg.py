"""
The stress report's SVG charts (heimdall.stress.svg, no plotting library):
each parses as XML and draws the series, axes and labels its data asks for.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from heimdall.stress import svg
from heimdall.stress.report import html_report, render_charts

NS = {"s": "http://www.w3.org/2000/svg"}


def _parse(text):
    root = ET.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0
    return root


def _texts(root):
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def _by_class(root, name):
    return [e for e in root.iter() if name in (e.get("class") or "").split()]


def _tick_labels(root, axis):
    groups = [g for g in _by_class(root, "axis") if axis in g.get("class").split()]
    return ["".join(t.itertext()) for g in groups for t in g.iter("{http://www.w3.org/2000/svg}text")
            if t.get("class") == "tick-label"]


def test_linear_scale_and_nice_ticks():
    scale = svg.LinearScale.nice(0, 973, 100, 0, count=4)
    assert (scale.lo, scale.hi) == (0, 1000)
    assert scale.ticks(4) == [0, 250, 500, 750, 1000]
    assert scale(0) == 100 and scale(1000) == 0 and scale(500) == 50
    assert svg.nice_step(9.3, 10) == 1 and svg.nice_step(0.03, 5) == 0.01
    # A flat domain still maps somewhere sane.
    assert math.isfinite(svg.LinearScale(5, 5, 0, 10)(5))


def test_log_scale_ticks_and_mapping():
    scale = svg.LogScale(0.5, 30, 0, 100)
    assert scale.ticks() == [0.5, 1, 2, 5, 10, 20]
    assert scale(0.5) == pytest.approx(0) and scale(30) == pytest.approx(100)
    assert scale(math.sqrt(0.5 * 30)) == pytest.approx(50)
    # Many decades: powers of ten only.
    assert svg.LogScale(0.01, 1e5, 0, 1).ticks() == [0.01, 0.1, 1, 10, 100, 1000, 10000, 100000]
    # Values at or below zero are clamped, not a math error.
    assert scale(0) == scale(0.5)
    assert svg.LogScale.around([None, 0, 3.0], 0, 1).lo < 3 < svg.LogScale.around([3.0], 0, 1).hi


def test_time_chart_draws_each_series_stack_and_the_kill():
    starts = [0.0, 1.0, 2.0, 3.0]
    chart = svg.time_chart(
        "over <time>",
        starts,
        [1.0] * 4,
        [svg.Series("p50", [1.0, 1.2, None, 0.9]), svg.Series("p99", [5, 6, 7, 8]),
         svg.Series("max", [10, 12, 14, 9], style="dotted")],
        {"a:1": [100, 100, 150, 150], "b&2": [100, 100, 50, 50]},
        rest=[0, 0, 0, 10],
        failed=[0, 0, 3, 0],
        mark_at=2.0,
        mark_until=2.4,
    )
    root = _parse(chart)
    assert root.find("s:title", NS).text == "over <time>"
    lines = {g.get("data-series"): g for g in _by_class(root, "series")}
    assert list(lines) == ["p50", "p99", "max"]
    # One point per value; the missing p50 value breaks its line in two.
    assert len(lines["p50"].findall("s:circle", NS)) == 3
    assert lines["p50"].find("s:path", NS).get("d").count("M") == 2
    assert len(lines["p99"].findall("s:circle", NS)) == 4
    assert lines["max"].find("s:path", NS).get("stroke-dasharray")
    stacks = {g.get("data-series"): g for g in _by_class(root, "stack")}
    assert list(stacks) == ["a:1", "b&2", "(no header)"]
    assert len(stacks["a:1"].findall("s:rect", NS)) == 4 and len(stacks["(no header)"].findall("s:rect", NS)) == 1
    # Stacked: b's bar sits on top of a's, taller where its rate is higher.
    a0, b0 = stacks["a:1"].find("s:rect", NS), stacks["b&2"].find("s:rect", NS)
    assert float(b0.get("y")) + float(b0.get("height")) == pytest.approx(float(a0.get("y")), abs=0.02)
    heights_b = [float(r.get("height")) for r in stacks["b&2"].findall("s:rect", NS)]
    assert heights_b[0] == pytest.approx(2 * heights_b[2], rel=0.01)
    assert len(_by_class(root, "mark")) == 2  # both panels
    assert len(_by_class(root, "failed")) == 1
    texts = _texts(root)
    for label in ("latency (ms)", "responses/s", "seconds since start", "p50", "p99", "max", "kill", "a:1", "b&2",
                  "failed requests"):
        assert label in texts, label
    # Time ticks (labelled once, under the lower panel), log latency ticks
    # (0.9 to 14 ms), rate ticks (0 to 210/s, rounded up to 250).
    assert _tick_labels(root, "x") == ["0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4"]
    assert _tick_labels(root, "y") == ["1", "2", "5", "10", "0", "50", "100", "150", "200", "250"]


def test_time_chart_without_backends_or_values():
    root = _parse(svg.time_chart("empty", [], [], [svg.Series("p50", [])], {}, rest=[]))
    assert [g.get("data-series") for g in _by_class(root, "stack")] == ["responses"]
    root = _parse(svg.time_chart("no header", [0.0], [1.0], [svg.Series("p50", [None])], {}, rest=[40.0]))
    (stack,) = _by_class(root, "stack")
    assert len(stack.findall("s:rect", NS)) == 1
    assert not _by_class(root, "legend-label") or "responses" not in _texts(root)


def test_histogram_chart_bars_and_percentiles():
    bins = [[0.5, 0.625, 3400], [0.625, 0.78, 3300], [0.78, 1.0, 1500], [1.0, 1.25, 0], [1.25, 2.0, 10]]
    root = _parse(svg.histogram_chart("Latency histogram", bins, [("p50", 0.7), ("p99", 1.9), ("p99.9", 0)]))
    (series,) = _by_class(root, "series")
    bars = series.findall("s:rect", NS)
    assert len(bars) == 4  # the empty bin draws nothing
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] == max(heights) and heights[0] / heights[1] == pytest.approx(3400 / 3300, rel=0.01)
    # Log x: equal ratios are equal widths.
    x = [float(b.get("x")) for b in bars]
    assert x[0] < x[1] < x[2] < x[3]
    assert [g.get("data-label") for g in _by_class(root, "percentile")] == ["p50", "p99"]
    texts = _texts(root)
    assert {"Latency histogram", "latency (ms, log scale)", "requests", "p50", "p99", "0.5", "1", "3,000"} <= set(texts)


def test_bar_chart_one_bar_per_label_in_order():
    root = _parse(svg.bar_chart("Requests per backend", ["x", "y<z>"], [60.0, 30.0], ["60.0% (6)", "30.0% (3)"],
                                x_label="share (%)"))
    bars = _by_class(root, "bar")
    assert [b.get("data-label") for b in bars] == ["x", "y<z>"]
    widths = [float(b.get("width")) for b in bars]
    assert widths[0] == pytest.approx(2 * widths[1], rel=0.01)
    assert float(bars[0].get("y")) < float(bars[1].get("y"))
    texts = _texts(root)
    assert {"x", "y<z>", "60.0% (6)", "30.0% (3)", "share (%)", "0"} <= set(texts)


def _result():
    from tests.stress.test_units import _result as base

    rows = [
        {"t": float(t), "width": 1.0, "responses": 10, "rate": 10.0, "errors": 0, "failed": int(t == 2),
         "status": {"200": 10}, "backends": {"a": 6, "b": 4} if t < 2 else {"a": 10},
         "p50_ms": 1.0 + t, "p99_ms": 5.0, "max_ms": 9.0}
        for t in range(4)
    ]
    return base(
        timeline=rows,
        backends={"header": "X-Backend", "counts": {"a": 32, "b": 8}, "percent": {"a": 80.0, "b": 20.0}},
        latency_distribution_ms=[[0.9, 1.1, 10], [1.1, 1.5, 20], [4.0, 5.5, 5]],
        scenario={"kill": {"at": 2.0, "action": "SIGKILL to pid 1", "error": None}, "moved_after_s": 0.1,
                  "phases": {name: {"from_s": 0.0, "to_s": 1.0, "failed": 0, "failures": {}}
                             for name in ("before", "during", "after")},
                  "killed_backend": "b", "killed_backend_served_before_kill": True, "settled": True, "passed": True},
    )


def test_report_charts_from_a_result():
    charts = render_charts(_result())
    assert set(charts) == {"latency_over_time", "latency_histogram", "backends"}
    over_time = _parse(charts["latency_over_time"])
    assert [g.get("data-series") for g in _by_class(over_time, "stack")] == ["a", "b"]
    assert [g.get("data-series") for g in _by_class(over_time, "series")] == ["p50", "p99", "max"]
    assert _by_class(over_time, "mark")
    histogram = _parse(charts["latency_histogram"])
    assert len(_by_class(histogram, "bar")) == 3
    backends = _parse(charts["backends"])
    assert "80.0% (32)" in _texts(backends)
    no_header = render_charts(dict(_result(), backends={"header": "X-Backend", "counts": {}, "percent": {}}))
    assert set(no_header) == {"latency_over_time", "latency_histogram"}


def test_html_report_inlines_the_three_charts():
    page = html_report(_result())
    for chart in ("chart-latency-over-time", "chart-latency-histogram", "chart-backends"):
        match = re.search(rf'<div class="chart" id="{chart}">(<svg.*?</svg>)</div>', page, re.S)
        assert match, chart
        _parse(match.group(1))
    assert "matplotlib" not in page and not re.search(r"<(script|link|img)\b", page)
