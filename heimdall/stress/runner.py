"""
The coordinator: starts the generator processes, shows progress, carries
out a scenario's action, and merges what the workers report into one
result (a JSON-ready dict).

Every run, even with one worker, generates load in child processes: the
coordinator's display, scenario actions and merging never delay a send,
and with C{--workers N} the load spreads over N cores.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import socket
import sys
import time
from multiprocessing.connection import wait as wait_for_pipes
from typing import IO, Any, Dict, List, Optional, Tuple

import attrs

from heimdall.stress import histogram as hdr
from heimdall.stress.engine import ERROR_KINDS, Worker, WorkerPlan
from heimdall.stress.http import Target, build_request
from heimdall.stress.progress import Snapshot, make_progress
from heimdall.stress.scenario import (
    KillPlan,
    analyze_failover,
    execute_kill,
    resolve_kill,
)

#: A generator process busier than this (share of one core) was probably
#: the bottleneck: its numbers describe the tool, not the target.
SATURATED = 0.90
#: An open-loop run that sent less than this share of its schedule fell behind.
RATE_SHORTFALL = 0.95
INTERVAL = 1.0
_START_DELAY = 0.05


@attrs.frozen
class StressOptions:
    url: str
    connections: int = 10
    duration: Optional[float] = None
    requests: Optional[int] = None
    rate: Optional[float] = None
    method: str = "GET"
    headers: Tuple[Tuple[str, str], ...] = ()
    body: Optional[bytes] = None
    keep_alive: bool = True
    timeout: float = 10.0
    workers: int = 1
    backend_header: Optional[str] = "X-Backend"
    quiet: bool = False
    progress_interval: float = 1.0
    scenario: Optional[str] = None
    kill: Optional[KillPlan] = None
    kill_at: float = 0.5

    def __attrs_post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("-c must be at least 1")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.workers > self.connections:
            raise ValueError(f"--workers ({self.workers}) cannot exceed the connections (-c {self.connections})")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be above 0")
        if self.requests is not None and self.requests < 1:
            raise ValueError("-n must be at least 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("-d must be above 0")
        if self.scenario is not None:
            if self.scenario != "failover":
                raise ValueError(f"unknown scenario {self.scenario!r} (known: failover)")
            if self.duration is None:
                raise ValueError("--scenario failover needs a duration (-d)")
            if self.kill is None:
                raise ValueError("--scenario failover needs --kill-pid, --kill-port or --manager")
            if not 0 < self.kill_at < 1:
                raise ValueError("--kill-at must be between 0 and 1")

    @property
    def run_duration(self) -> Optional[float]:
        if self.duration is None and self.requests is None:
            return 10.0  # the default when neither -d nor -n is given
        return self.duration


def _split(total: int, parts: int) -> List[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def make_plans(options: StressOptions) -> List[WorkerPlan]:
    target = Target.from_url(options.url)
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    if not infos:
        raise ValueError(f"cannot resolve {target.host}")
    family, _, _, _, address = infos[0]
    request = build_request(target, options.method, options.headers, options.body, options.keep_alive)
    n = options.workers
    connections = _split(options.connections, n)
    counts = _split(options.requests, n) if options.requests is not None else [None] * n
    return [
        WorkerPlan(
            index=i,
            family=family,
            address=address,
            request=request,
            head_request=options.method == "HEAD",
            keep_alive=options.keep_alive,
            connections=connections[i],
            requests=counts[i],
            duration=options.run_duration,
            rate=options.rate / n if options.rate is not None else None,
            timeout=options.timeout,
            interval=INTERVAL,
            backend_header=options.backend_header,
            watch_port=options.kill.port if options.kill is not None else None,
        )
        for i in range(n)
    ]


def _worker_main(plan: WorkerPlan, pipe) -> None:
    """
    A generator process: report ready, wait for the common start time, run,
    send the final numbers.
    """
    holder: List[Worker] = []

    def stop(signum, frame):
        if holder:
            holder[0].request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    worker = Worker(plan, emit=pipe.send)
    holder.append(worker)
    pipe.send({"kind": "ready", "worker": plan.index})
    command = pipe.recv()
    if command.get("cancel"):
        return
    final = worker.run(command["start_at"])
    pipe.send(final)
    pipe.close()


class _Timeline:
    """
    Per-interval numbers from every worker, merged by interval.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.entries: Dict[int, Dict[str, Any]] = {}

    def add(self, tick: Dict[str, Any]) -> None:
        entry = self.entries.setdefault(
            tick["index"],
            {"responses": 0, "errors": 0, "failed": 0, "status": {}, "backends": {}, "histograms": [], "reports": 0},
        )
        entry["responses"] += tick["responses"]
        entry["errors"] += tick["errors"]
        entry["failed"] += tick["failed"]
        for code, count in tick["status"].items():
            entry["status"][code] = entry["status"].get(code, 0) + count
        for name, count in tick["backends"].items():
            entry["backends"][name] = entry["backends"].get(name, 0) + count
        if tick["histogram"]:
            entry["histograms"].append(tick["histogram"])
        entry["reports"] += 1
        entry["end"] = max(entry.get("end", 0.0), tick["at"])

    def rows(self, end: float) -> List[Dict[str, Any]]:
        rows = []
        last = max(self.entries) if self.entries else -1
        for index in sorted(self.entries):
            entry = self.entries[index]
            start = index * INTERVAL
            # The last interval may be partial, or longer (a folded remainder).
            width = max(end - start, 1e-3) if index == last else INTERVAL
            merged = hdr.merge(entry["histograms"], hdr.INTERVAL_DIGITS)
            latency = hdr.summary_ms(merged)
            rows.append(
                {
                    "t": start,
                    "width": width,
                    "responses": entry["responses"],
                    "rate": entry["responses"] / width,
                    "errors": entry["errors"],
                    "failed": entry["failed"],
                    "status": {str(k): v for k, v in sorted(entry["status"].items())},
                    "backends": dict(sorted(entry["backends"].items())),
                    "p50_ms": latency["p50"],
                    "p99_ms": latency["p99"],
                    "max_ms": latency["max"],
                }
            )
        return rows


def run(options: StressOptions, out: IO[str] = sys.stdout) -> Dict[str, Any]:
    """
    Run the load and return the result (see docs/stress.md for its fields).
    """
    if options.kill is not None:
        options = attrs.evolve(options, kill=resolve_kill(options.kill))
    plans = make_plans(options)
    methods = multiprocessing.get_all_start_methods()
    # fork starts in milliseconds; spawn (macOS, Windows) re-imports.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pipes = []
    processes = []
    for plan in plans:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(plan, child_end), daemon=True)
        process.start()
        child_end.close()
        pipes.append(parent_end)
        processes.append(process)
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    progress = make_progress(out, options.quiet, options.progress_interval)
    coordinator = _Coordinator(options, plans, pipes, progress, _Timeline(len(plans)))
    try:
        _wait_ready(pipes, processes)
        coordinator.run()
    except KeyboardInterrupt:
        coordinator.interrupted = True
    finally:
        progress.stop()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for pipe in pipes:
            pipe.close()
    finals = coordinator.finals
    if len(finals) < len(plans):
        missing = sorted(set(range(len(plans))) - set(finals))
        raise RuntimeError(f"generator process(es) {missing} ended without a result")
    usage_end = resource.getrusage(resource.RUSAGE_SELF)
    coordinator_cpu = (usage_end.ru_utime - usage_start.ru_utime) + (usage_end.ru_stime - usage_start.ru_stime)
    return build_result(
        options, plans, finals, coordinator.timeline, coordinator.kill_result, coordinator_cpu, coordinator.interrupted
    )


@attrs.define(eq=False)
class _Coordinator:
    """
    Starts the workers at one instant, merges their per-interval reports
    into the timeline and the progress display, runs the failover kill on
    time, and collects each worker's final report.
    """

    options: StressOptions
    plans: List[WorkerPlan]
    pipes: list
    progress: Any
    timeline: "_Timeline"
    finals: Dict[int, Dict[str, Any]] = attrs.Factory(dict)
    kill_result: Any = None
    interrupted: bool = False
    responses: int = 0
    failed: int = 0
    last_rate: float = 0.0
    last_p99: Optional[float] = None
    completed: Optional[float] = None  # end of the last interval every worker reported

    def run(self) -> None:
        options = self.options
        start_at = time.monotonic() + _START_DELAY
        for pipe in self.pipes:
            pipe.send({"start_at": start_at})
        self.progress.start()
        duration = options.run_duration
        kill_time = duration * options.kill_at if options.kill is not None and duration else None
        alive = {pipe: plan.index for pipe, plan in zip(self.pipes, self.plans)}
        while alive:
            try:
                ready = wait_for_pipes(list(alive), timeout=0.1)
            except KeyboardInterrupt:
                self.interrupted = True
                continue  # the workers got the signal too: they stop and report
            for pipe in ready:
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    del alive[pipe]
                    continue
                if message["kind"] == "tick":
                    self._tick(message)
                elif message["kind"] == "final":
                    self.finals[message["worker"]] = message
                    del alive[pipe]
            elapsed = time.monotonic() - start_at
            if kill_time is not None and self.kill_result is None and elapsed >= kill_time:
                self.kill_result = execute_kill(options.kill, elapsed)
                self.progress.note(
                    f"[{elapsed:6.1f}s] failover: {self.kill_result.action}"
                    + (f" FAILED: {self.kill_result.error}" if self.kill_result.error else "")
                )
            self._show(elapsed, duration)

    def _tick(self, message: Dict[str, Any]) -> None:
        self.timeline.add(message)
        self.responses += message["responses"]
        self.failed += message["failed"]
        index = message["index"]
        entry = self.timeline.entries[index]
        if entry["reports"] >= len(self.plans) and not message["final"]:
            self.last_rate = entry["responses"] / INTERVAL
            merged = hdr.merge(entry["histograms"], hdr.INTERVAL_DIGITS)
            self.last_p99 = hdr.summary_ms(merged)["p99"]
            self.completed = (index + 1) * INTERVAL

    def _show(self, elapsed: float, duration: Optional[float]) -> None:
        if duration:
            fraction = elapsed / duration
        elif self.options.requests:
            fraction = self.responses / self.options.requests
        else:
            fraction = None
        figures = (self.responses, self.last_rate, self.failed, self.last_p99, fraction)
        if self.completed is not None:
            self.progress.update(Snapshot(self.completed, *figures, True))
            self.completed = None
        self.progress.update(Snapshot(max(elapsed, 0.0), *figures))


def _wait_ready(pipes, processes) -> None:
    deadline = time.monotonic() + 30
    pending = set(pipes)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError("generator processes did not start")
        for pipe in wait_for_pipes(list(pending), timeout=0.5):
            try:
                message = pipe.recv()
            except EOFError:
                raise RuntimeError("a generator process died while starting") from None
            if message.get("kind") == "ready":
                pending.discard(pipe)


def _merge_counts(workers: List[Dict[str, Any]]):
    status: Dict[str, int] = {}
    backends: Dict[str, int] = {}
    last_seen: Dict[str, float] = {}
    for w in workers:
        for code, count in w["status"].items():
            status[str(code)] = status.get(str(code), 0) + count
        for name, count in w["backends"].items():
            backends[name] = backends.get(name, 0) + count
        for name, t in w["backend_last_seen"].items():
            last_seen[name] = max(last_seen.get(name, t), t)
    return status, backends, last_seen


def _cpu_rows(workers: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [
        {
            "worker": w["worker"],
            "cpu_seconds": round(w["cpu_seconds"], 3),
            "wall_seconds": round(w["wall_seconds"], 3),
            "busy": round(w["cpu_seconds"] / max(w["wall_seconds"], 1e-9), 3),
        }
        for w in workers
    ]


def _warnings(options: StressOptions, workers, cpu_workers, saturated: bool, responses: int,
              tracked: int, interrupted: bool) -> List[str]:
    warnings: List[str] = []
    if saturated:
        warnings.append(
            "the load generator itself was saturated (a worker used "
            f"{max(c['busy'] for c in cpu_workers):.0%} of a core): the numbers may describe "
            "the generator, not the target; add --workers if there are idle cores"
        )
    issued = sum(w["issued"] for w in workers)
    unsent = sum(w["unsent"] for w in workers)
    if options.rate is not None:
        scheduled = issued + unsent
        if scheduled and issued / scheduled < RATE_SHORTFALL:
            warnings.append(
                f"the rate was not kept: {unsent:,} of {scheduled:,} scheduled requests were never sent "
                "(the target, or the generator, could not keep up; latencies include the wait)"
            )
    if options.backend_header and responses and tracked == 0:
        warnings.append(f"no response carried the {options.backend_header} header: no backend distribution")
    if interrupted:
        warnings.append("interrupted: the run stopped early")
    return warnings


def build_result(
    options: StressOptions,
    plans: List[WorkerPlan],
    finals: Dict[int, Dict[str, Any]],
    timeline: _Timeline,
    kill_result,
    coordinator_cpu: float,
    interrupted: bool,
) -> Dict[str, Any]:
    workers = [finals[i] for i in sorted(finals)]
    histogram = hdr.merge(w["histogram"] for w in workers)
    elapsed = max(w["ended"] for w in workers) - min(w["started"] for w in workers)
    elapsed = max(elapsed, 1e-9)
    responses = sum(w["responses"] for w in workers)
    errors = {kind: sum(w["errors"].get(kind, 0) for w in workers) for kind in ERROR_KINDS}
    status, backends, last_seen = _merge_counts(workers)
    errors_total = sum(errors.values())
    http_5xx = sum(count for code, count in status.items() if code.startswith("5"))
    tracked = sum(backends.values())
    cpu_workers = _cpu_rows(workers)
    saturated = any(c["busy"] >= SATURATED for c in cpu_workers)
    interrupted = interrupted or any(w["stopped_by_signal"] for w in workers)
    rows = timeline.rows(elapsed)
    result: Dict[str, Any] = {
        "tool": "heimdall stress",
        "version": _version(),
        "target": options.url,
        "method": options.method,
        "mode": "open" if options.rate is not None else "closed",
        "rate": options.rate,
        "latency_measured_from": "scheduled send time" if options.rate is not None else "send time",
        "connections": options.connections,
        "workers": len(plans),
        "keep_alive": options.keep_alive,
        "duration_s": round(elapsed, 6),
        "requests": responses + errors_total,
        "responses": responses,
        "requests_per_second": round(responses / elapsed, 3),
        "bytes_received": sum(w["bytes_received"] for w in workers),
        "status_codes": dict(sorted(status.items())),
        "errors": errors,
        "errors_total": errors_total,
        "http_5xx": http_5xx,
        "failed": errors_total + http_5xx,
        "unsent": sum(w["unsent"] for w in workers),
        "abandoned": sum(w.get("abandoned", 0) for w in workers),
        "latency_ms": {k: (round(v, 4) if v is not None else None) for k, v in hdr.summary_ms(histogram).items()},
        "latency_distribution_ms": [
            [round(low, 5), round(high, 5), count] for low, high, count in hdr.distribution_ms(histogram)
        ],
        "histogram": hdr.encode(histogram),
        "backends": {
            "header": options.backend_header,
            "counts": dict(sorted(backends.items())),
            "percent": {name: round(100.0 * count / tracked, 3) for name, count in sorted(backends.items())}
            if tracked
            else {},
        },
        "cpu": {
            "workers": cpu_workers,
            "coordinator_cpu_seconds": round(coordinator_cpu, 3),
            "cores": os.cpu_count(),
            "saturated": saturated,
        },
        "timeline": rows,
        "warnings": _warnings(options, workers, cpu_workers, saturated, responses, tracked, interrupted),
        "interrupted": interrupted,
        "scenario": None,
    }
    if kill_result is not None or options.scenario:
        result["scenario"] = _scenario(kill_result, workers, last_seen, rows, elapsed, errors_total + http_5xx)
    return result


def _scenario(kill_result, workers, last_seen, rows, elapsed: float, failed: int) -> Dict[str, Any]:
    if kill_result is None:
        from heimdall.stress.scenario import KillResult

        kill_result = KillResult(elapsed, "none (the run ended first)", None, None, "the run ended before the kill")
    failure_events = sorted(event for w in workers for event in w["failure_events"])
    watched = sorted(t for w in workers for t in w.get("watched_times", ()))
    return analyze_failover(kill_result, failure_events, last_seen, rows, elapsed, failed, watched)


def _version() -> str:
    from heimdall import __version__

    return __version__
