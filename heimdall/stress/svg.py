"""
Small SVG charts written by heimdall itself, for the stress report: no
plotting library, no script, nothing loaded from elsewhere.  Each function
returns one C{<svg>} document as text, which the HTML report inlines.

  - L{time_chart}: latency series over time (log scale) above a panel of
    bars stacked per backend (responses per second), with an optional
    marked moment (a kill) and span;
  - L{histogram_chart}: bars over latency bins (log x) with vertical lines
    at given percentiles;
  - L{bar_chart}: horizontal bars, one per label, with a value text each.

Elements carry classes and C{data-*} attributes (C{series}, C{bar},
C{axis}, C{tick}, C{legend}, C{marker}) so that tests, and readers of the
source, can find what is drawn.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape, quoteattr

#: matplotlib's "tab10", so that the charts look as they did.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
CHAR_WIDTH = 6.6  # average width of one character at 11 px, for layout only


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt_number(value: float) -> str:
    """
    A tick label: C{1,000} for large whole numbers, C{0.5} or C{2.5} for
    the rest, never an exponent for the ranges a report has.
    """
    if value == 0:
        return "0"
    if abs(value) >= 1000 and float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.6g}"
    return f"{value:.3g}"


# -- scales ------------------------------------------------------------------------


def nice_step(span: float, count: int) -> float:
    """
    A round step (1, 2, 2.5 or 5 times a power of ten) near C{span / count}.
    """
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power  # pragma: no cover


class LinearScale:
    """
    Maps the domain [lo, hi] to the pixel range [a, b] (b < a for a y axis).
    """

    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        if hi <= lo:
            hi = lo + 1.0
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, value: float) -> float:
        return self.a + (value - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, count: int = 5) -> List[float]:
        step = nice_step(self.hi - self.lo, count)
        first = math.ceil(self.lo / step - 1e-9) * step
        values = []
        value = first
        while value <= self.hi + step * 1e-9:
            values.append(round(value, 10))
            value += step
        return values

    @classmethod
    def nice(cls, lo: float, hi: float, a: float, b: float, count: int = 5) -> "LinearScale":
        """
        A scale whose ends are extended to round tick values.
        """
        if hi <= lo:
            hi = lo + 1.0
        step = nice_step(hi - lo, count)
        return cls(math.floor(lo / step) * step, math.ceil(hi / step - 1e-9) * step, a, b)


class LogScale:
    """
    A base-10 log scale from C{lo} to C{hi} (both > 0) onto [a, b].
    """

    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        lo = max(lo, 1e-9)
        if hi <= lo:
            lo, hi = lo / math.sqrt(10), lo * math.sqrt(10)
        self.lo, self.hi, self.a, self.b = lo, hi, a, b
        self._llo, self._lhi = math.log10(lo), math.log10(hi)

    def __call__(self, value: float) -> float:
        value = max(value, self.lo)
        return self.a + (math.log10(value) - self._llo) / (self._lhi - self._llo) * (self.b - self.a)

    def ticks(self) -> List[float]:
        """
        Powers of ten inside the domain, with 2 and 5 between them when the
        domain spans fewer than three decades (else a short range has one
        tick or none).
        """
        decades = self._lhi - self._llo
        factors = (1,) if decades > 3 else (1, 2, 5)
        values = []
        for power in range(math.floor(self._llo), math.ceil(self._lhi) + 1):
            for factor in factors:
                value = factor * 10.0 ** power
                if self.lo * (1 - 1e-9) <= value <= self.hi * (1 + 1e-9):
                    values.append(float(f"{value:.12g}"))
        return values

    @classmethod
    def around(cls, values: Iterable[float], a: float, b: float) -> "LogScale":
        """
        A scale covering the positive C{values}, with some room each side.
        """
        positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
        if not positive:
            return cls(0.1, 10.0, a, b)
        return cls(min(positive) / 1.3, max(positive) * 1.3, a, b)


# -- the document ------------------------------------------------------------------


def _attrs(attributes: Dict[str, object]) -> str:
    parts = []
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.2f}".rstrip("0").rstrip(".")
        parts.append(f" {key.rstrip('_').replace('_', '-')}={quoteattr(str(value))}")
    return "".join(parts)


class Document:
    """
    An SVG document built element by element.
    """

    def __init__(self, width: int, height: int, title: str) -> None:
        self.width, self.height = width, height
        self.title = title
        self.parts: List[str] = []

    def add(self, tag: str, text: Optional[str] = None, tooltip: Optional[str] = None, **attributes: object) -> None:
        inner = ""
        if tooltip is not None:
            inner += f"<title>{escape(tooltip)}</title>"
        if text is not None:
            inner += escape(text)
        if inner:
            self.parts.append(f"<{tag}{_attrs(attributes)}>{inner}</{tag}>")
        else:
            self.parts.append(f"<{tag}{_attrs(attributes)}/>")

    def open(self, tag: str, **attributes: object) -> None:
        self.parts.append(f"<{tag}{_attrs(attributes)}>")

    def close(self, tag: str) -> None:
        self.parts.append(f"</{tag}>")

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "start", **attributes) -> None:
        self.add("text", text, x=x, y=y, font_size=size, text_anchor=anchor, **attributes)

    def render(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" font-family={quoteattr(FONT)} '
            f'font-size="11"><title>{escape(self.title)}</title>'
            f'<rect class="background" x="0" y="0" width="{self.width}" height="{self.height}" fill="white"/>'
        )
        return head + "".join(self.parts) + "</svg>"


class _Frame:
    """
    A plotting area: its pixel box, and the axes drawn around it.
    """

    def __init__(self, doc: Document, left: float, top: float, right: float, bottom: float) -> None:
        self.doc = doc
        self.left, self.top, self.right, self.bottom = left, top, right, bottom

    def box(self) -> None:
        self.doc.add("rect", class_="frame", x=self.left, y=self.top, width=self.right - self.left,
                     height=self.bottom - self.top, fill="none", stroke="#444", stroke_width=1)

    def y_axis(self, scale, ticks: Sequence[float], label: str, grid: bool = True) -> None:
        doc = self.doc
        doc.open("g", class_="axis y")
        for value in ticks:
            y = scale(value)
            if grid:
                doc.add("line", class_="grid", x1=self.left, x2=self.right, y1=y, y2=y, stroke="#000",
                        stroke_opacity=0.1)
            doc.add("line", class_="tick", x1=self.left - 4, x2=self.left, y1=y, y2=y, stroke="#444")
            doc.text(self.left - 6, y + 4, fmt_number(value), anchor="end", class_="tick-label")
        middle = (self.top + self.bottom) / 2
        doc.text(14, middle, label, size=12, anchor="middle", class_="axis-label",
                 transform=f"rotate(-90 14 {middle:.1f})")
        doc.close("g")

    def x_axis(self, scale, ticks: Sequence[float], label: Optional[str], labels: bool = True,
               grid: bool = True) -> None:
        doc = self.doc
        doc.open("g", class_="axis x")
        for value in ticks:
            x = scale(value)
            if grid:
                doc.add("line", class_="grid", x1=x, x2=x, y1=self.top, y2=self.bottom, stroke="#000",
                        stroke_opacity=0.1)
            doc.add("line", class_="tick", x1=x, x2=x, y1=self.bottom, y2=self.bottom + 4, stroke="#444")
            if labels:
                doc.text(x, self.bottom + 16, fmt_number(value), anchor="middle", class_="tick-label")
        if label:
            doc.text((self.left + self.right) / 2, self.bottom + 34, label, size=12, anchor="middle",
                     class_="axis-label")
        doc.close("g")


def _legend(doc: Document, x: float, y: float, entries: Sequence[Tuple[str, str, str]], anchor_right: bool = False,
            columns: int = 1) -> None:
    """
    C{entries}: (label, colour, kind) with kind "line", "dotted", "dashed",
    "cross" or "box"; drawn from (x, y), right-aligned to x if asked.
    """
    if not entries:
        return
    widths = [30 + CHAR_WIDTH * len(label) for label, _, _ in entries]
    column_width = max(widths)
    per_column = math.ceil(len(entries) / columns)
    columns = math.ceil(len(entries) / per_column)
    total_width = column_width * columns + 8
    if anchor_right:
        x -= total_width
    height = per_column * 16 + 6
    doc.open("g", class_="legend")
    doc.add("rect", x=x, y=y, width=total_width, height=height, fill="white", fill_opacity=0.85, stroke="#ccc")
    for i, (label, colour, kind) in enumerate(entries):
        cx = x + 6 + (i // per_column) * column_width
        cy = y + 12 + (i % per_column) * 16
        if kind == "box":
            doc.add("rect", x=cx, y=cy - 7, width=18, height=9, fill=colour)
        elif kind == "cross":
            _cross(doc, cx + 9, cy - 3, colour)
        else:
            dash = {"dotted": "2 3", "dashed": "6 3"}.get(kind)
            doc.add("line", x1=cx, x2=cx + 18, y1=cy - 3, y2=cy - 3, stroke=colour, stroke_width=2,
                    stroke_dasharray=dash)
        doc.text(cx + 24, cy + 1, label, size=10, class_="legend-label")
    doc.close("g")


def _cross(doc: Document, x: float, y: float, colour: str, size: float = 4) -> None:
    doc.add("path", class_="marker", d=f"M{x - size:.1f},{y - size:.1f}L{x + size:.1f},{y + size:.1f}"
            f"M{x - size:.1f},{y + size:.1f}L{x + size:.1f},{y - size:.1f}", stroke=colour, stroke_width=2)


def _path(points: Sequence[Tuple[float, Optional[float]]]) -> str:
    """
    A polyline through the points, broken where a value is missing.
    """
    out = []
    pen_up = True
    for x, y in points:
        if y is None:
            pen_up = True
            continue
        out.append(f"{'M' if pen_up else 'L'}{x:.1f},{y:.1f}")
        pen_up = False
    return "".join(out)


# -- the three charts ------------------------------------------------------------------


class Series:
    """
    One line of L{time_chart}: C{values} aligned with the chart's times
    (None where there is no value), drawn solid, dotted or dashed.
    """

    def __init__(self, name: str, values: Sequence[Optional[float]], style: str = "line") -> None:
        self.name, self.values, self.style = name, list(values), style


def time_chart(
    title: str,
    starts: Sequence[float],
    widths: Sequence[float],
    series: Sequence[Series],
    stacks: Dict[str, Sequence[float]],
    rest: Optional[Sequence[float]] = None,
    failed: Optional[Sequence[int]] = None,
    mark_at: Optional[float] = None,
    mark_until: Optional[float] = None,
    mark_label: str = "kill",
    y_label: str = "latency (ms)",
    bars_label: str = "responses/s",
    x_label: str = "seconds since start",
    width: int = 900,
) -> str:
    """
    Latency over time above throughput over time.

    @param starts: each interval's start (s); C{widths} its width.
    @param series: the lines of the top panel (log scale), one value per
        interval, drawn at its middle.
    @param stacks: per name, one rate per interval, stacked in the bottom
        panel in this order; C{rest} (grey, "(no header)") on top, or, with
        no C{stacks}, the total as grey bars.
    @param failed: failed requests per interval: a red cross at the top of
        the upper panel where nonzero.
    @param mark_at: a moment marked with a red dashed line in both panels,
        shaded until C{mark_until}.
    """
    legend_rows = math.ceil((len(stacks) + (1 if rest and any(rest) else 0)) / 4) if stacks else 0
    legend_y = 420 + 42
    height = legend_y + 16 * legend_rows + 12 if legend_rows else 420 + 44
    doc = Document(width, height, title)
    left, right = 70, width - 20
    top = _Frame(doc, left, 34, right, 270)
    bottom = _Frame(doc, left, 300, right, 420)
    doc.text(width / 2, 20, title, size=13, anchor="middle", class_="chart-title")

    ends = [s + w for s, w in zip(starts, widths)]
    t_hi = max(ends + ([mark_until] if mark_until is not None else []), default=1.0)
    x = LinearScale(min(0.0, min(starts, default=0.0)), max(t_hi, 1e-3), left, right)
    x_ticks = x.ticks(10)

    middles = [s + w / 2 for s, w in zip(starts, widths)]
    _latency_panel(doc, top, x, x_ticks, middles, series, failed, y_label, mark_at, mark_until)
    entries = [(line.name, color(i), line.style) for i, line in enumerate(series)]
    if failed and any(failed):
        entries.append(("failed requests", "#d62728", "cross"))
    if mark_at is not None:
        entries.append((mark_label, "#d62728", "dashed"))
    top.box()
    _legend(doc, right - 6, top.top + 6, entries, anchor_right=True)

    # Bottom panel: responses per second, stacked per backend.
    layers: List[Tuple[str, str, Sequence[float]]] = [(name, color(i), stacks[name]) for i, name in enumerate(stacks)]
    if stacks and rest and any(rest):
        layers.append(("(no header)", "#d3d3d3", rest))
    if not stacks:
        layers.append(("responses", "#808080", rest or [0.0] * len(starts)))
    _throughput_panel(doc, bottom, x, x_ticks, starts, widths, layers, bars_label, x_label, mark_at, mark_until)
    bottom.box()
    if stacks:
        legend = [(name, colour, "box") for name, colour, _ in layers]
        _legend(doc, left, legend_y, legend, columns=min(4, len(legend)))
    return doc.render()


def _latency_panel(doc: Document, top: _Frame, x: LinearScale, x_ticks, middles: Sequence[float],
                   series: Sequence[Series], failed: Optional[Sequence[int]], y_label: str,
                   mark_at: Optional[float], mark_until: Optional[float]) -> None:
    """
    L{time_chart}'s top panel: the mark, latency lines (log scale) and failure crosses.
    """
    all_values = [v for s in series for v in s.values if v is not None]
    y = LogScale.around(all_values, top.bottom, top.top)
    top.y_axis(y, y.ticks(), y_label)
    top.x_axis(x, x_ticks, None, labels=False)
    if mark_at is not None:
        _mark(doc, top, x, mark_at, mark_until, first=True)
    for i, line in enumerate(series):
        colour = color(i)
        points = [(x(t), y(v) if v is not None and v > 0 else None) for t, v in zip(middles, line.values)]
        dash = {"dotted": "2 3", "dashed": "6 3"}.get(line.style)
        path = _path(points)
        doc.open("g", class_="series", data_series=line.name)
        doc.add("path", d=path or "M0,0", fill="none", stroke=colour, stroke_width=1.8,
                stroke_dasharray=dash, visibility=None if path else "hidden")
        for (px, py), t, v in zip(points, middles, line.values):
            if py is not None:
                doc.add("circle", class_="point", cx=px, cy=py, r=2.5, fill=colour,
                        tooltip=f"{line.name} at {t:g} s: {fmt_number(v)} ms")
        doc.close("g")
    if failed and any(failed):
        doc.open("g", class_="failed")
        for t, count in zip(middles, failed):
            if count:
                _cross(doc, x(t), top.top + 8, "#d62728")
        doc.close("g")


def _throughput_panel(doc: Document, bottom: _Frame, x: LinearScale, x_ticks, starts: Sequence[float],
                      widths: Sequence[float], layers: Sequence[Tuple[str, str, Sequence[float]]], bars_label: str,
                      x_label: str, mark_at: Optional[float], mark_until: Optional[float]) -> None:
    """
    L{time_chart}'s bottom panel: the mark and the stacked bars of C{layers} ((name, colour, rates)).
    """
    totals = [0.0] * len(starts)
    for _, _, values in layers:
        totals = [t + v for t, v in zip(totals, values)]
    yb = LinearScale.nice(0.0, max(max(totals, default=0.0), 1.0), bottom.bottom, bottom.top, count=5)
    bottom.y_axis(yb, yb.ticks(5), bars_label)
    bottom.x_axis(x, x_ticks, x_label, grid=False)
    if mark_at is not None:
        _mark(doc, bottom, x, mark_at, mark_until, first=False)
    base = [0.0] * len(starts)
    for name, colour, values in layers:
        doc.open("g", class_="stack", data_series=name)
        for i, (start, w, value) in enumerate(zip(starts, widths, values)):
            if value <= 0:
                continue
            x0, x1 = x(start), x(start + w * 0.92)
            y0, y1 = yb(base[i]), yb(base[i] + value)
            doc.add("rect", class_="bar", x=x0, y=y1, width=max(x1 - x0, 0.5), height=max(y0 - y1, 0.5),
                    fill=colour, tooltip=f"{name}, {start:g}-{start + w:g} s: {value:,.0f}/s")
        base = [b + v for b, v in zip(base, values)]
        doc.close("g")


def _mark(doc: Document, frame: _Frame, x: LinearScale, at: float, until: Optional[float], first: bool) -> None:
    doc.open("g", class_="mark")
    if until is not None:
        x1 = x(max(until, at + 0.05))
        doc.add("rect", x=x(at), y=frame.top, width=max(x1 - x(at), 1), height=frame.bottom - frame.top,
                fill="#d62728", fill_opacity=0.08)
    doc.add("line", x1=x(at), x2=x(at), y1=frame.top, y2=frame.bottom, stroke="#d62728", stroke_width=1.5,
            stroke_dasharray="6 3")
    doc.close("g")


def histogram_chart(
    title: str,
    bins: Sequence[Sequence[float]],
    marks: Sequence[Tuple[str, float]] = (),
    x_label: str = "latency (ms, log scale)",
    y_label: str = "requests",
    width: int = 900,
) -> str:
    """
    Bars over C{bins} ([low, high, count] each, low > 0) on a log x axis,
    and a dashed vertical line with its label at each of C{marks}.
    """
    height = 300
    doc = Document(width, height, title)
    left, right = 70, width - 20
    frame = _Frame(doc, left, 34, right, height - 50)
    doc.text(width / 2, 20, title, size=13, anchor="middle", class_="chart-title")
    edges = [b[0] for b in bins] + [b[1] for b in bins] + [value for _, value in marks]
    positive = [v for v in edges if v and v > 0]
    if positive:
        x = LogScale(min(positive) / 1.15, max(positive) * 1.15, left, right)
    else:
        x = LogScale(0.1, 10.0, left, right)
    peak = max((b[2] for b in bins), default=0)
    y = LinearScale.nice(0.0, max(peak, 1), frame.bottom, frame.top, count=6)
    frame.y_axis(y, y.ticks(6), y_label)
    frame.x_axis(x, x.ticks(), x_label, grid=False)
    doc.open("g", class_="series", data_series="histogram")
    for low, high, count in bins:
        if count <= 0 or low <= 0:
            continue
        x0, x1 = x(low), x(high)
        doc.add("rect", class_="bar", x=x0, y=y(count), width=max(x1 - x0 - 0.6, 0.5),
                height=max(frame.bottom - y(count), 0.5), fill=PALETTE[0],
                tooltip=f"{fmt_number(low)}-{fmt_number(high)} ms: {count:,}")
    doc.close("g")
    for label, value in marks:
        if not value or value <= 0:
            continue
        px = x(value)
        doc.open("g", class_="percentile", data_label=label)
        doc.add("line", x1=px, x2=px, y1=frame.top, y2=frame.bottom, stroke="#000", stroke_opacity=0.6,
                stroke_dasharray="5 3", tooltip=f"{label}: {fmt_number(value)} ms")
        doc.text(px - 3, frame.top + 4, label, size=10, anchor="end",
                 transform=f"rotate(-90 {px - 3:.1f} {frame.top + 4:.1f})")
        doc.close("g")
    frame.box()
    return doc.render()


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    notes: Optional[Sequence[str]] = None,
    x_label: str = "",
    width: int = 900,
) -> str:
    """
    One horizontal bar per label, top to bottom in the given order, with
    C{notes} (or the value) written after each bar.
    """
    row = 34
    height = int(70 + row * max(len(labels), 1) + 20)
    doc = Document(width, height, title)
    left = min(20 + CHAR_WIDTH * 1.1 * max((len(label) for label in labels), default=4), width / 3)
    right = width - 20
    frame = _Frame(doc, left, 34, right, height - 56)
    doc.text(width / 2, 20, title, size=13, anchor="middle", class_="chart-title")
    x = LinearScale.nice(0.0, max(list(values) + [1.0]) * 1.25, left, right, count=8)
    frame.x_axis(x, x.ticks(8), x_label, grid=True)
    notes = list(notes) if notes is not None else [fmt_number(v) for v in values]
    doc.open("g", class_="series", data_series="bars")
    for i, (label, value, note) in enumerate(zip(labels, values, notes)):
        y0 = frame.top + 6 + i * row
        doc.add("rect", class_="bar", x=left, y=y0, width=max(x(value) - left, 0.5), height=row - 10,
                fill="#4c72b0", data_label=label, tooltip=f"{label}: {note}")
        doc.text(left - 6, y0 + (row - 10) / 2 + 4, label, anchor="end", class_="bar-label")
        doc.text(x(value) + 4, y0 + (row - 10) / 2 + 4, note, size=10, class_="bar-note")
    doc.close("g")
    frame.box()
    return doc.render()
