"""
The request queues' metrics (L{heimdall.proxy.queue.RequestQueue}), read
at scrape time from each service's queue:

    heimdall_queue_length{service}                 requests waiting now
    heimdall_queue_size{service}                   how many may wait
    heimdall_queued_total{service}                 requests that waited
    heimdall_queue_rejected_total{service,reason}  503s: full, timeout
    heimdall_queue_wait_seconds{service}           histogram: time waited by dispatched requests
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from heimdall.proxy.queue import QUEUE_WAIT_BUCKETS

__all__ = ["queue_families"]


def queue_families(queues: Mapping[str, Any]) -> Iterable:
    """
    The queue metric families for C{queues} (service name to queue).
    """
    labels = ["service"]
    length = GaugeMetricFamily("heimdall_queue_length", "Requests waiting for a free backend.", labels=labels)
    size = GaugeMetricFamily("heimdall_queue_size", "How many requests may wait.", labels=labels)
    queued = CounterMetricFamily("heimdall_queued", "Requests that had to wait in the queue.", labels=labels)
    rejected = CounterMetricFamily(
        "heimdall_queue_rejected", "Requests answered 503 by the queue: full, or timed out.",
        labels=["service", "reason"],
    )
    wait = HistogramMetricFamily(
        "heimdall_queue_wait_seconds", "Time dispatched requests waited in the queue.", labels=labels
    )
    for name, queue in sorted(queues.items()):
        length.add_metric([name], len(queue))
        size.add_metric([name], queue.size)
        queued.add_metric([name], queue.queued_total)
        for reason, count in sorted(queue.rejected.items()):
            rejected.add_metric([name, reason], count)
        buckets, total = [], 0
        for bound, count in zip(QUEUE_WAIT_BUCKETS + (float("inf"),), queue.wait_counts):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        wait.add_metric([name], buckets, queue.wait_sum)
    return [length, size, queued, rejected, wait]
