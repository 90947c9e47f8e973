"""
Latency histograms: HdrHistogram (the C{hdrhistogram} package), in
microseconds, from 1 µs to one hour.

Recording one value in C{hdrhistogram} costs about 2 µs of Python, a tenth
of a request's budget at 50k req/s.  So the load loop only appends integers
to a list; L{LatencyRecorder.flush} (once per report interval) counts equal
values with C{collections.Counter} (C code) and records each distinct value
once with its count.  The histograms are the library's; only the batching
is ours.

Workers send histograms to the coordinator in HdrHistogram's standard
compressed encoding, which the coordinator decodes and adds up: merged
percentiles are exact to the histogram's precision, unlike averaged ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
#: The run's histogram: 3 significant digits (0.1 % error).
TOTAL_DIGITS = 3
#: Per-interval histograms (timeline, live p99): 2 digits, 1 % error, 10x smaller.
INTERVAL_DIGITS = 2

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram(digits: int = TOTAL_DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


class LatencyRecorder:
    """
    Latencies of one worker: the whole run and the current interval.
    """

    def __init__(self) -> None:
        self.total = new_histogram(TOTAL_DIGITS)
        self.interval = new_histogram(INTERVAL_DIGITS)
        self.pending: List[int] = []

    def flush(self) -> None:
        """
        Move the pending values into both histograms.
        """
        pending, self.pending = self.pending, []
        if not pending:
            return
        total, interval = self.total, self.interval
        for value, count in Counter(pending).items():
            if value < LOWEST_US:
                value = LOWEST_US
            elif value > HIGHEST_US:
                value = HIGHEST_US
            total.record_value(value, count)
            interval.record_value(value, count)

    def take_interval(self) -> Optional[str]:
        """
        The interval histogram, encoded, and a fresh one in its place;
        None if nothing was recorded.
        """
        self.flush()
        interval = self.interval
        if interval.get_total_count() == 0:
            return None
        encoded = encode(interval)
        self.interval = new_histogram(INTERVAL_DIGITS)
        return encoded


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii"))


def merge(encoded: Iterable[Optional[str]], digits: int = TOTAL_DIGITS) -> HdrHistogram:
    """
    One histogram adding up all the encoded ones (None entries skipped).
    """
    result = new_histogram(digits)
    for item in encoded:
        if item:
            result.decode_and_add(item.encode("ascii"))
    return result


def summary_ms(histogram: HdrHistogram) -> Dict[str, Optional[float]]:
    """
    min, mean, stdev, p50, p90, p99, p99.9 and max, in milliseconds.
    """
    if histogram.get_total_count() == 0:
        return {key: None for key in ("min", "mean", "stdev", "p50", "p90", "p99", "p99_9", "max")}
    out: Dict[str, Optional[float]] = {
        "min": histogram.get_min_value() / 1000.0,
        "mean": histogram.get_mean_value() / 1000.0,
        "stdev": histogram.get_stddev() / 1000.0,
    }
    for percentile in PERCENTILES:
        key = "p" + f"{percentile:g}".replace(".", "_")
        out[key] = histogram.get_value_at_percentile(percentile) / 1000.0
    # The highest equivalent value of the top bucket, as HdrHistogram reports max.
    out["max"] = histogram.get_max_value() / 1000.0
    return out


def distribution_ms(histogram: HdrHistogram, buckets_per_decade: int = 10) -> List[Tuple[float, float, int]]:
    """
    The histogram regrouped in logarithmic bins for a chart:
    C{(low_ms, high_ms, count)} for each non-empty bin.
    """
    if histogram.get_total_count() == 0:
        return []
    import math

    bins: Dict[int, int] = {}
    for item in histogram.get_recorded_iterator():
        value = max(item.value_iterated_to, 1)
        index = int(math.floor(math.log10(value) * buckets_per_decade))
        bins[index] = bins.get(index, 0) + item.count_at_value_iterated_to
    out = []
    for index in sorted(bins):
        low = 10 ** (index / buckets_per_decade) / 1000.0
        high = 10 ** ((index + 1) / buckets_per_decade) / 1000.0
        out.append((low, high, bins[index]))
    return out
