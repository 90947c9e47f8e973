"""
C{--scenario failover}: kill one backend half way through a run and tell
what the clients saw.

The kill, whichever is given:
  - C{--manager URL --kill-port N}: C{DELETE URL/servers/remove?port=N}
    (heimdall's manager API removes the server from the pool and stops it);
  - C{--manager URL} alone: the first server C{GET URL/servers/list} names;
  - C{--kill-pid PID}: a signal (C{--kill-signal}, default KILL: a crash);
  - C{--kill-port N}: a signal to the process listening on port N (found
    through /proc, or psutil where there is no /proc).

The analysis: the run is cut into I{before} (up to the kill), I{during}
(from the kill until traffic had fully moved) and I{after}.  Traffic has
fully moved at the later of the last response served by the killed backend
and the end of the burst of failed requests that follows the kill (failures
less than L{BURST_GAP} apart).  A failed request is a transport error or a
5xx response.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import attrs

#: Failures further apart than this after the kill are not the kill's burst.
BURST_GAP = 1.0


class ScenarioError(Exception):
    pass


@attrs.frozen
class KillPlan:
    """
    What to kill and how.
    """

    pid: Optional[int] = None
    port: Optional[int] = None
    manager: Optional[str] = None
    signal_name: str = "KILL"
    manager_token: Optional[str] = attrs.field(default=None, repr=False)

    def describe(self) -> str:
        if self.manager:
            which = f"port {self.port}" if self.port else "the first listed server"
            return f"remove {which} through the manager at {self.manager}"
        if self.pid:
            return f"SIG{self.signal_name} to pid {self.pid}"
        return f"SIG{self.signal_name} to the process listening on port {self.port}"


@attrs.define
class KillResult:
    at: float  # seconds since the run's start
    action: str
    port: Optional[int]
    pid: Optional[int]
    error: Optional[str] = None


def execute_kill(plan: KillPlan, at: float, timeout: float = 5.0) -> KillResult:
    """
    Carry out C{plan}; never raises (a failure is in the result's C{error}).
    """
    port, pid = plan.port, plan.pid
    try:
        if plan.manager:
            base = plan.manager.rstrip("/")
            if port is None:
                port = first_listed_port(base, timeout, plan.manager_token)
            request = urllib.request.Request(
                f"{base}/servers/remove?port={port}", method="DELETE", headers=_auth(plan.manager_token)
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            return KillResult(at, f"DELETE {base}/servers/remove?port={port}", port, None)
        signum = getattr(signal, "SIG" + plan.signal_name.upper().replace("SIG", "", 1))
        if pid is None:
            if port is None:
                raise ScenarioError("nothing to kill: give --kill-pid, --kill-port or --manager")
            pids = listening_pids(port)
            if not pids:
                raise ScenarioError(f"no process is listening on port {port}")
            pid = pids[0]
        elif port is None:
            ports = listening_ports(pid)
            port = ports[0] if ports else None
        os.kill(pid, signum)
        return KillResult(at, f"SIG{plan.signal_name.upper()} to pid {pid}", port, pid)
    except urllib.error.HTTPError as error:
        body = error.read()[:200].decode("utf-8", "replace")
        return KillResult(at, plan.describe(), port, pid, f"HTTP {error.code}: {body}")
    except Exception as error:  # reported, the run goes on
        return KillResult(at, plan.describe(), port, pid, f"{type(error).__name__}: {error}")


def resolve_kill(plan: KillPlan, timeout: float = 5.0) -> KillPlan:
    """
    Find the victim's port before the run (from its pid, or the manager's
    list), so that the load generators can follow its responses.  Raises
    L{ScenarioError} when there is nothing to kill.
    """
    if plan.port is not None:
        return plan
    if plan.manager:
        return attrs.evolve(plan, port=first_listed_port(plan.manager.rstrip("/"), timeout, plan.manager_token))
    if plan.pid is not None:
        try:
            os.kill(plan.pid, 0)
        except ProcessLookupError:
            raise ScenarioError(f"no process {plan.pid}") from None
        ports = listening_ports(plan.pid)
        return attrs.evolve(plan, port=ports[0]) if ports else plan
    raise ScenarioError("nothing to kill: give --kill-pid, --kill-port or --manager")


def _auth(token: Optional[str]) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def first_listed_port(manager: str, timeout: float = 5.0, token: Optional[str] = None) -> int:
    """
    The first port in the manager's C{GET /servers/list} answer (a JSON
    list, or an object holding one, of objects with a C{port}).
    """
    request = urllib.request.Request(f"{manager}/servers/list", headers=_auth(token))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        document = json.loads(response.read())
    ports = sorted(_find_ports(document))
    if not ports:
        raise ScenarioError(f"{manager}/servers/list names no server")
    return ports[0]


def _find_ports(document: Any) -> Iterable[int]:
    if isinstance(document, dict):
        port = document.get("port")
        if isinstance(port, int) and not isinstance(port, bool):
            yield port
            return
        for value in document.values():
            yield from _find_ports(value)
    elif isinstance(document, list):
        for item in document:
            yield from _find_ports(item)


# -- which process listens where (Linux /proc, else psutil) ---------------------


def _listening_inodes(port: Optional[int] = None) -> Dict[int, int]:
    """
    inode -> port of the TCP sockets in LISTEN state (all, or on C{port}).
    """
    inodes: Dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if port is None or local_port == port:
                inodes[int(fields[9])] = local_port
    return inodes


def _socket_inodes(pid: int) -> List[int]:
    found = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.append(int(link[8:-1]))
    return found


def listening_pids(port: int) -> List[int]:
    """
    The processes with a socket listening on TCP C{port}.
    """
    if os.path.isdir("/proc/net"):
        inodes = _listening_inodes(port)
        if not inodes:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and any(inode in inodes for inode in _socket_inodes(int(entry))):
                pids.append(int(entry))
        return sorted(pids)
    import psutil  # not Linux: psutil knows (pip install psutil)

    return sorted(
        {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port and c.pid}
    )


def listening_ports(pid: int) -> List[int]:
    """
    The TCP ports process C{pid} listens on.
    """
    if os.path.isdir("/proc/net"):
        inodes = _listening_inodes()
        return sorted({inodes[i] for i in _socket_inodes(pid) if i in inodes})
    import psutil

    return sorted({c.laddr.port for c in psutil.Process(pid).connections("tcp") if c.status == "LISTEN"})


# -- the analysis --------------------------------------------------------------


def backend_matches(label: str, port: Optional[int]) -> bool:
    """
    Whether a tracked-header value names the backend on C{port}: C{host:PORT}
    (heimdall's demo backend) or C{PORT} alone.
    """
    if port is None:
        return False
    return label == str(port) or label.endswith(f":{port}")


def _end_of_run(times: Sequence[float], start: float) -> Tuple[float, Optional[float]]:
    """
    From C{start}, follow C{times} while they come less than L{BURST_GAP}
    apart: (the last of that run, the first time after a longer gap or
    None).
    """
    end = start
    for t in sorted(times):
        if t < start:
            continue
        if t - end <= BURST_GAP:
            end = max(end, t)
        else:
            return end, t
    return end, None


def analyze_failover(
    kill: KillResult,
    failure_events: Sequence[Tuple[float, str]],
    backend_last_seen: Dict[str, float],
    timeline: Sequence[Dict[str, Any]],
    end: float,
    failed_total: int,
    watched_times: Sequence[float] = (),
) -> Dict[str, Any]:
    """
    Failures before, during and after, and how long traffic took to move.

    Traffic has fully moved at the later of the end of the killed backend's
    responses after the kill and the end of the burst of failures after
    it (each: events less than L{BURST_GAP} apart).  A killed backend that
    answers again after a longer gap was restarted: C{returned_at_s}.
    """
    k = kill.at
    killed = [label for label in backend_last_seen if backend_matches(label, kill.port)]
    served_until, returned_at = _end_of_run(watched_times, k)
    failures_until, _ = _end_of_run([t for t, _kind in failure_events], k)
    moved = max(served_until, failures_until)
    phases = {"before": (0.0, k), "during": (k, moved), "after": (moved, end)}
    out: Dict[str, Any] = {
        "name": "failover",
        "kill": attrs.asdict(kill),
        "killed_backend": killed[0] if killed else None,
        "killed_backend_served_before_kill": any(t < k for t in watched_times),
        "killed_backend_returned_at_s": round(returned_at, 6) if returned_at is not None else None,
        "moved_after_s": round(moved - k, 6),
        "settled": end - moved > BURST_GAP,
        "phases": {},
    }
    for name, (low, high) in phases.items():
        failures: Dict[str, int] = {}
        for t, kind in failure_events:
            inside = (low <= t < high) if name == "before" else (low <= t <= high) if name == "during" else t > low
            if inside:
                failures[kind] = failures.get(kind, 0) + 1
        responses = sum(
            entry["responses"] for entry in timeline if low <= entry["t"] + entry["width"] / 2 < max(high, low + 1e-9)
        )
        out["phases"][name] = {
            "from_s": round(low, 6),
            "to_s": round(high, 6),
            "failed": sum(failures.values()),
            "failures": failures,
            "responses_approx": responses,
        }
    out["failed_total"] = failed_total
    out["passed"] = kill.error is None and failed_total == 0
    return out
