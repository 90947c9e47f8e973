"""
Reload under load, with twistd heimdall as users run it: steady closed-loop
keep-alive traffic on several connections while the config is reloaded
10 times, by SIGHUP and POST /reload in turn, changing routes, weights and
backends (added and removed); not one request fails, and after each
reload the new routing is in effect within 1 s.  A bad config is refused
both ways (400 with the field path; a log line for SIGHUP) and traffic is
untouched; a server added through the API survives every reload; a kept
backend keeps its counters and health; a removed backend's request in
flight completes.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


from tests.netutil import free_port

CONNECTIONS = 4


def _start_backends(ports):
    procs = [
        subprocess.Popen([sys.executable, "-m", "heimdall.backend", "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for port in ports
    ]
    for proc in procs:
        proc.stdout.readline()  # "heimdall backend listening on ..."
    return procs


def _manager(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Load:
    """
    CONNECTIONS threads, each one keep-alive connection sending the next
    request when the last answer is in (a closed loop), to the default
    service and to the api service in turn.
    """

    def __init__(self, port):
        self.port = port
        self.ok = 0
        self.failures = []
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CONNECTIONS)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, index):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        paths = ("/load", "/api/load")
        n = index
        while self.running:
            path = paths[n % 2]
            n += 1
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                answer.read()
                failed = None if answer.status == 200 else f"{path}: status {answer.status}"
            except Exception as e:  # a reset, a timeout: a failed request
                failed = f"{path}: {type(e).__name__}: {e}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self.lock:
                if failed is None:
                    self.ok += 1
                else:
                    self.failures.append(failed)
        connection.close()

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join(15)


def _get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("X-Backend"), answer.read()
    finally:
        connection.close()


def _in_effect(port, generation, default, api, timeout=1.0):
    """
    Poll until the routes and backends of C{generation} serve: its marker
    route answers, and the default and api services answer from exactly
    their new backends.  Returns the seconds it took.
    """
    started = time.monotonic()
    want_default, want_api = {f"127.0.0.1:{p}" for p in default}, {f"127.0.0.1:{p}" for p in api}
    while True:
        marker = _get(port, f"/generation/{generation}")
        seen_default = {_get(port, "/probe")[1] for _ in range(3 * len(want_default))}
        seen_api = {_get(port, "/api/probe")[1] for _ in range(3 * len(want_api))}
        if marker[0] == 200 and marker[2] == f"gen {generation}".encode() and seen_default == want_default \
                and seen_api == want_api:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"generation {generation} not in effect after {timeout} s: marker {marker[:1]}, "
                f"default {sorted(seen_default)} (want {sorted(want_default)}), "
                f"api {sorted(seen_api)} (want {sorted(want_api)})"
            )
        time.sleep(0.02)


def _config(proxy, manager, state, generation, default, api, slow):
    return {
        "listen": f"tcp:{proxy}:interface=127.0.0.1",
        "manager": {"listen": f"tcp:{manager}:interface=127.0.0.1", "state_file": state},
        "access_log": {"enabled": False},
        "strategy": "weighted_round_robin",
        "health": {"interval": "0.2s", "down_interval": "0.2s", "jitter": 0, "timeout": "1s"},
        "backends": [{"url": f"http://127.0.0.1:{port}", "weight": weight} for port, weight in default],
        "services": {
            "api": {"backends": [f"http://127.0.0.1:{port}" for port in api], "strategy": "weighted_round_robin"},
            "slow": {"backends": [f"http://127.0.0.1:{slow}"]},
        },
        "routes": [
            {"match": {"path_prefix": "/slow"}, "service": "slow", "strip_prefix": True},
            {"match": {"path_prefix": f"/generation/{generation}"},
             "respond": {"status": 200, "body": f"gen {generation}"}},
            {"match": {"path_prefix": "/api"}, "service": "api", "strip_prefix": True},
        ],
    }


def test_reload_under_load(run_heimdall, tmp_path):
    b0, b1, b2, b3, runtime = (free_port() for _ in range(5))
    backends = _start_backends([b0, b1, b2, b3, runtime])
    proxy, manager = free_port(), free_port()
    state = str(tmp_path / "state.json")
    # Generation by generation: the default service's backends (port,
    # weight) and the api service's; the runtime server stays in default.
    plan = [
        ([(b0, 1), (b1, 1)], [b2]),
        ([(b0, 3), (b1, 1)], [b2, b3]),
        ([(b0, 1), (b2, 1)], [b3]),
        ([(b0, 2), (b1, 1)], [b2, b3]),
        ([(b1, 1)], [b3]),
        ([(b0, 1), (b1, 1), (b2, 1)], [b2]),
        ([(b2, 5), (b0, 1)], [b2, b3]),
        ([(b0, 1)], [b3]),
        ([(b1, 1), (b2, 2)], [b2]),
        ([(b0, 1), (b1, 1)], [b2, b3]),
        ([(b1, 4), (b3, 1)], [b2, b3]),
    ]
    # The slow service's one backend moves from b2 to b3 at generation 2.
    heimdall = run_heimdall(_config(proxy, manager, state, 0, *plan[0], b2))
    load = None
    try:
        heimdall.wait_for("heimdall manager listening")
        code, added = _manager(manager, "POST", "/servers/add", {"url": f"http://127.0.0.1:{runtime}"})
        assert code == 201, added
        _in_effect(proxy, 0, [p for p, _ in plan[0][0]] + [runtime], plan[0][1], timeout=5)
        load = Load(proxy).start()
        took = []
        for generation, (default, api) in enumerate(plan[1:], start=1):
            config = _config(proxy, manager, state, generation, default, api, b2 if generation < 2 else b3)
            heimdall.config_path.write_text(json.dumps(config))
            before = {s["port"]: s for s in _manager(manager, "GET", "/servers/list")[1]}
            slow, results = [], []
            if generation == 2:
                # A request in flight on b2, which this reload removes.
                slow = [threading.Thread(target=lambda: results.append(_get(proxy, "/slow/delay?ms=700")))]
                for thread in slow:
                    thread.start()
                time.sleep(0.2)
            if generation % 2:
                code, report = _manager(manager, "POST", "/reload")
                assert code == 200, report
                assert report["generation"] == generation + 1
            else:
                heimdall.proc.send_signal(signal.SIGHUP)
                heimdall.wait_for(f"config reloaded by SIGHUP (generation {generation + 1},", timeout=5)
            took.append(_in_effect(proxy, generation, [p for p, _ in default] + [runtime], api))
            after = {s["port"]: s for s in _manager(manager, "GET", "/servers/list")[1]}
            for port in set(before) & set(after):
                # Kept backends keep their counters and health.
                assert after[port]["requests_total"] >= before[port]["requests_total"]
                assert after[port]["health"]["status"] == before[port]["health"]["status"] == "up"
            assert after[runtime]["source"] == "runtime"
            if generation == 2:
                for thread in slow:
                    thread.join(5)
                assert [r[:2] for r in results] == [(200, f"127.0.0.1:{b2}")]
                assert _get(proxy, "/slow/x")[1] == f"127.0.0.1:{b3}"
            if generation == 5:
                # A bad config, both ways: refused, traffic untouched.
                good = heimdall.config_path.read_text()
                bad = json.loads(good)
                bad["services"]["api"]["backends"][0] = "http://127.0.0.1:0"
                heimdall.config_path.write_text(json.dumps(bad))
                code, error = _manager(manager, "POST", "/reload")
                assert code == 400 and error["detail"]["field"] == "services.api.backends[0].url", error
                heimdall.proc.send_signal(signal.SIGHUP)
                heimdall.wait_for("reload by SIGHUP refused: invalid configuration in", timeout=5)
                assert "services.api.backends[0].url" in heimdall.output().split("reload by SIGHUP refused")[1]
                heimdall.config_path.write_text(good)
                code, status = _manager(manager, "GET", "/status")
                assert status["config"]["generation"] == generation + 1
                _in_effect(proxy, generation, [p for p, _ in default] + [runtime], api)
        load.stop()
        assert load.failures == [], load.failures[:10]
        assert load.ok > 100
        assert max(took) < 1.0
        code, status = _manager(manager, "GET", "/status")
        assert status["config"]["generation"] == len(plan)
        print(f"\n[reload under load] {len(plan) - 1} reloads, {load.ok} requests, 0 failed; "
              f"new routing in effect after {min(took):.3f}-{max(took):.3f} s")
    finally:
        if load is not None:
            load.stop()
        heimdall.stop()
        for proc in backends:
            proc.kill()
            proc.wait(5)
