"""
heimdall stress against a running heimdall (twistd, 3 spawned demo
backends), run as users run it: a subprocess, with its own processes.
Every process these tests start is stopped at the end, pass or fail.
"""

from __future__ import annotations

import html.parser
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

from tests.netutil import free_port
from tests.processes import HeimdallProcess

STRESS = [sys.executable, "-m", "heimdall.stress"]


class RunningHeimdall(HeimdallProcess):
    """
    C{twistd -n heimdall} with C{spawn} demo backends; C{ports} are theirs.
    """

    def __init__(self, directory: Path, spawn: int = 3, health: Optional[dict] = None, restart: Optional[dict] = None):
        self.proxy_port = free_port()
        self.manager_port = free_port()
        config = {
            "listen": f"tcp:{self.proxy_port}:interface=127.0.0.1",
            "strategy": "round_robin",
            "spawn": spawn,
            "manager": {"listen": f"tcp:{self.manager_port}:interface=127.0.0.1", "base_port": free_port()},
            "access_log": {"enabled": False},
        }
        if health is not None:
            config["health"] = health
        if restart is not None:
            config["manager"]["restart"] = restart
        super().__init__(directory, config)
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.manager = f"http://127.0.0.1:{self.manager_port}"
        try:
            self.ports = self._wait_spawned(spawn)
        except BaseException:
            self.kill_all()  # the caller never gets it to stop
            raise

    def _wait_spawned(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = [int(p) for p in re.findall(r"spawned demo backend http://127\.0\.0\.1:(\d+)", self.output())]
            if len(ports) >= n:
                return sorted(ports)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"heimdall did not spawn {n} backends:\n{self.output()}")

    def backend_count(self, port):
        """
        The demo backend's own request counter (this request included).
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return json.loads(response.read())["count"]


@pytest.fixture(scope="module")
def heimdall(tmp_path_factory):
    # No active health checks: they would add to the backends' counters.
    running = RunningHeimdall(tmp_path_factory.mktemp("heimdall"), health={"type": "none"})
    yield running
    running.stop()


def _stress(*args, timeout=60):
    result = subprocess.run([*STRESS, *args], capture_output=True, text=True, timeout=timeout, check=False)
    return result


def test_closed_loop_json_matches_the_backends_own_counters(heimdall, tmp_path):
    before = {port: heimdall.backend_count(port) for port in heimdall.ports}
    out = tmp_path / "run.json"
    run = _stress(heimdall.url + "/", "-c", "6", "-n", "900", "--workers", "2", "--json", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    after = {port: heimdall.backend_count(port) for port in heimdall.ports}
    served = {f"127.0.0.1:{port}": after[port] - before[port] - 1 for port in heimdall.ports}
    assert result["mode"] == "closed" and result["workers"] == 2 and result["connections"] == 6
    assert result["requests"] == result["responses"] == 900
    assert result["status_codes"] == {"200": 900}
    assert result["errors"] == {"connect": 0, "timeout": 0, "reset": 0, "protocol": 0}
    assert result["failed"] == 0 and result["unsent"] == 0
    # What the tool counted per backend is what each backend counted.
    assert result["backends"]["header"] == "X-Backend"
    assert result["backends"]["counts"] == served
    # Round robin over 3: exactly a third each.
    assert set(served.values()) == {300}
    assert all(p == pytest.approx(100 / 3, abs=0.01) for p in result["backends"]["percent"].values())
    latency = result["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99_9"] <= latency["max"]
    assert result["requests_per_second"] > 0 and result["duration_s"] > 0
    assert sum(row["responses"] for row in result["timeline"]) == 900
    assert sum(count for _, _, count in result["latency_distribution_ms"]) == 900
    assert len(result["cpu"]["workers"]) == 2
    # The text report went to stdout, progress lines too (not a terminal).
    assert "backends      (from the X-Backend header)" in run.stdout
    assert "33.33%" in run.stdout


def test_open_loop_rate_with_html_report(heimdall, tmp_path):
    report = tmp_path / "report.html"
    out = tmp_path / "run.json"
    run = _stress(heimdall.url + "/", "-c", "8", "-d", "2s", "--rate", "200", "--report", str(report),
                  "--json", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "open" and result["rate"] == 200
    assert result["latency_measured_from"] == "scheduled send time"
    assert result["requests"] == 400 and result["failed"] == 0 and result["unsent"] == 0
    assert 190 <= result["requests_per_second"] <= 210
    assert len(result["timeline"]) == 2
    assert all(row["rate"] == pytest.approx(200, rel=0.03) for row in result["timeline"])
    assert "open loop at 200 req/s" in run.stdout
    # Plain progress lines, one per second, when stdout is not a terminal.
    # The first second's line shows the paced rate (within 5%: a loaded
    # machine may start a few sends late).
    first = re.search(r"^\[\s+1\.0s\]\s+(\d+) req/s", run.stdout, re.M)
    assert first and abs(int(first.group(1)) - 200) <= 10, run.stdout
    page = report.read_text()
    _check_html(page)
    for chart in ("chart-latency-over-time", "chart-latency-histogram", "chart-backends"):
        assert f'id="{chart}"><svg' in page
    # Self-contained: nothing loaded from elsewhere.
    assert not re.search(r"<(script|link|img)\b", page)
    assert "127.0.0.1:%d" % heimdall.ports[0] in page


class _Checker(html.parser.HTMLParser):
    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self):
        super().__init__()
        self.stack = []
        self.seen = set()

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.seen.add(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def _check_html(page):
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert {"html", "head", "title", "body", "svg", "table"} <= checker.seen


def _failover(tmp_path, *kill_args):
    # Not restarted: the killed backend must stay gone for the test to see
    # that traffic left it for good.
    running = RunningHeimdall(tmp_path / "heimdall", restart={"policy": "never"})
    try:
        victim = running.ports[1]
        out = tmp_path / "run.json"
        args = [arg.replace("{port}", str(victim)).replace("{manager}", running.manager) for arg in kill_args]
        run = _stress(running.url + "/", "-c", "6", "-d", "3s", "--scenario", "failover", *args,
                      "--json", str(out))
        result = json.loads(out.read_text())
        return run, result, victim
    finally:
        running.stop()


def _check_failover(run, result, victim):
    scenario = result["scenario"]
    assert scenario["name"] == "failover" and scenario["kill"]["error"] is None, run.stdout
    assert scenario["kill"]["at"] == pytest.approx(1.5, abs=0.5)
    assert scenario["killed_backend"] == f"127.0.0.1:{victim}"
    assert scenario["killed_backend_served_before_kill"]
    assert set(scenario["phases"]) == {"before", "during", "after"}
    assert scenario["phases"]["before"]["failed"] == 0
    assert scenario["moved_after_s"] < 1.5
    # After the move, the killed backend got nothing more.
    moved_at = scenario["kill"]["at"] + scenario["moved_after_s"]
    late = [row for row in result["timeline"] if row["t"] >= moved_at]
    assert late and all(f"127.0.0.1:{victim}" not in row["backends"] for row in late)
    assert "failover" in run.stdout and "traffic fully moved" in run.stdout
    assert result["failed"] == 0, scenario["phases"]["during"]["failures"]
    assert scenario["passed"] and run.returncode == 0, run.stdout
    assert "result: PASS" in run.stdout


def test_failover_by_signal_reports_no_failed_request(tmp_path):
    run, result, victim = _failover(tmp_path, "--kill-port", "{port}")
    assert result["scenario"]["kill"]["action"].startswith("SIGKILL to pid ")
    _check_failover(run, result, victim)


def test_failover_through_the_manager_reports_no_failed_request(tmp_path):
    run, result, victim = _failover(tmp_path, "--manager", "{manager}", "--kill-port", "{port}")
    assert result["scenario"]["kill"]["action"].endswith(f"/servers/remove?port={victim}")
    _check_failover(run, result, victim)


# -- the HTML report in a real browser, from the default install ---------------------

# Run in the child: refuse to import any module that a plain
# `pip install heimdall` (no extras) would not have installed.
_DEFAULT_INSTALL_ONLY = r"""
import runpy, sys
blocked = set(sys.argv[1].split(","))

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not part of the default install")
        return None

sys.meta_path.insert(0, Refuse())
sys.argv = ["heimdall stress"] + sys.argv[2:]
runpy.run_module("heimdall.stress", run_name="__main__")
"""


def _default_install_closure():
    """
    The distributions a plain `pip install heimdall` installs: heimdall's
    requirements without extras, and theirs (with the extras they ask for).
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen = set()
    todo = [("heimdall", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in ({""} | set(extras))
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen}


def _modules_outside(closure):
    """
    Top-level modules installed here by distributions outside C{closure}
    (the test extra: pytest, selenium, hypothesis, ...).
    """
    from importlib import metadata

    from packaging.utils import canonicalize_name

    owners = {}
    for dist in metadata.distributions():
        top = (dist.read_text("top_level.txt") or "").split()
        if not top:
            top = sorted({Path(str(f)).parts[0].split(".")[0] for f in dist.files or ()
                          if not str(f).startswith(("..", "/")) and ".dist-info" not in str(f)})
        for module in top:
            owners.setdefault(module, set()).add(canonicalize_name(dist.metadata["Name"]))
    return {module for module, dists in owners.items() if not dists & closure and module.isidentifier()}


def test_default_install_report_has_charts_that_render_in_chromium(heimdall, tmp_path, browser):
    from selenium.webdriver.common.by import By

    closure = _default_install_closure()
    assert {"heimdall", "twisted", "hdrhistogram", "rich"} <= closure and "selenium" not in closure
    blocked = _modules_outside(closure)
    assert {"selenium", "pytest", "hypothesis"} <= blocked and "heimdall" not in blocked
    report = tmp_path / "report.html"
    run = subprocess.run(
        [sys.executable, "-c", _DEFAULT_INSTALL_ONLY, ",".join(sorted(blocked)), heimdall.url + "/", "-c", "4",
         "-d", "2s", "--rate", "100", "--report", str(report), "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"HTML report written to {report}" in run.stdout
    browser.get(report.as_uri())
    assert browser.driver.title.startswith("heimdall stress:")
    for chart, least in (("chart-latency-over-time", {"point": 6, "bar": 6}),
                         ("chart-latency-histogram", {"bar": 1}),
                         ("chart-backends", {"bar": 3})):
        svg = browser.driver.find_element(By.CSS_SELECTOR, f"#{chart} > svg")
        width, height = browser.element_size(svg)
        assert width > 300 and height > 100, (chart, width, height)
        # Every drawn mark has an area on the page, and the text is laid out.
        sizes = browser.script(
            """
            const out = {};
            for (const kind of ["point", "bar", "tick-label", "axis-label"]) {
              out[kind] = Array.from(arguments[0].querySelectorAll("." + kind)).map(e => {
                const r = e.getBoundingClientRect(); return [r.width, r.height]; });
            }
            return out;
            """,
            svg,
        )
        for kind, count in least.items():
            assert len(sizes[kind]) >= count, (chart, kind, sizes[kind])
            assert all(w > 0 and h > 0 for w, h in sizes[kind]), (chart, kind, sizes[kind])
        assert sizes["tick-label"] and all(w > 0 and h > 0 for w, h in sizes["tick-label"]), chart
        assert sizes["axis-label"], chart
        png = svg.screenshot_as_png
        assert png.startswith(b"\x89PNG") and len(png) > 2000, chart
    backends = browser.driver.find_element(By.ID, "chart-backends").text
    assert all(f"127.0.0.1:{port}" in backends for port in heimdall.ports)
    browser.screenshot(tmp_path / "report.png")
    assert browser.console_errors() == []
