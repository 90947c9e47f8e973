"""
The dashboard in a real browser (Debian's headless Chromium, driven by
Selenium: tests/browser.py) against heimdall run as users run it (twistd,
the shipped config's shape: three spawned demo backends), with traffic
flowing through the proxy meanwhile.

In order, on one heimdall and one page (each test uses its own backend):
the page loads without console errors and shows the three backends up; a
backend killed with SIGKILL turns down on the page within 2 s, without a
reload, and the feed shows the event; Drain drains a backend (the API
agrees) and Make ready undoes it; a weight set on the page is what
/servers/get reports; a spawned server added and removed from the page;
the screenshot docs/dashboard.png.  Then, with a token configured, the
page without it shows a prompt and no data.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import open_browser, require_browser
from tests.processes import free_base, wait_until as _wait
from tests.netutil import free_port

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def _config(base: int, **manager) -> dict:
    return {
        "listen": f"tcp:{free_port()}:interface=127.0.0.1",
        "strategy": "round_robin",
        "spawn": 3,
        "manager": {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "base_port": base,
            "port_range": 10,
            "drain_timeout": "2s",
            "stop_grace": "2s",
            # Long enough that the page shows the killed backend down before
            # supervision brings it back.
            "restart": {"backoff": "5s", "max_backoff": "5s"},
            **manager,
        },
        "access_log": {"enabled": False},
    }


class Traffic(threading.Thread):
    """
    A few requests a second through the proxy, so that the charts and the
    rates have something to show.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopping = threading.Event()

    def run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self.stopping.wait(0.05):
            try:
                with opener.open(self.url, timeout=2) as response:
                    response.read()
            except OSError:
                pass  # a backend just killed: the page shows the errors

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def _rows(browser) -> dict:
    """Each backend row's state on the page, by backend id."""
    return browser.script(
        "const out = {}; for (const tr of document.querySelectorAll('tr[data-backend]'))"
        " out[tr.dataset.backend] = tr.dataset.state; return out;"
    )


def _row(browser, backend_id: str):
    from selenium.webdriver.common.by import By

    return browser.driver.find_element(By.CSS_SELECTOR, f'tr[data-backend="{backend_id}"]')


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """
    (heimdall, browser, backend ids) for the tests in order: the page open
    on a twistd heimdall with three spawned demo backends and traffic.
    """
    require_browser()
    from tests.manager.test_integration import Heimdall

    directory = tmp_path_factory.mktemp("dashboard")
    h = Heimdall(directory / "heimdall", _config(free_base(5)))
    traffic = None
    try:
        h.wait_ready()
        servers = _wait(lambda: (lambda s: len(s) == 3 and s)(h.call("GET", "/servers/list")[1]), 30,
                        interval=0.2, what="three spawned demo backends")
        for server in servers:
            h.extra_pids.add(server["pid"])
        traffic = Traffic(h.proxy + "/")
        traffic.start()
        with open_browser(directory / "browser", width=1280, height=900) as browser:
            yield h, browser, [server["id"] for server in servers]
    finally:
        if traffic is not None:
            traffic.stop()
        h.kill_all()


def test_the_page_loads_without_errors_and_shows_the_three_backends_up(live):
    h, browser, ids = live
    browser.get(h.manager + "/dashboard")
    rows = _wait(lambda: (lambda r: len(r) == 3 and all(s == "up" for s in r.values()) and r)(_rows(browser)), 10,
                 what="three backends up on the page")
    assert sorted(rows) == sorted(ids)
    assert browser.driver.find_element("id", "token-prompt").is_displayed() is False
    assert browser.script("return document.getElementById('generation').textContent") == "1"
    # Stats arrive every second: the uptime moves without a reload.
    uptime = browser.script("return document.getElementById('uptime').textContent")
    _wait(lambda: browser.script("return document.getElementById('uptime').textContent") != uptime, 3,
          what="the uptime moving")
    assert browser.console_errors() == []


def test_a_backend_killed_turns_down_on_the_page_within_2s(live):
    h, browser, ids = live
    victim = ids[0]
    pid = next(s["pid"] for s in h.call("GET", "/servers/list")[1] if s["id"] == victim)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    state = _wait(lambda: _rows(browser).get(victim) in ("down", "ejected") and _rows(browser)[victim], 2.0,
                  what=f"{victim} down or ejected on the page")
    assert time.monotonic() - killed < 2.0
    feed = _wait(lambda: [text for text in browser.script(
        "return Array.from(document.querySelectorAll('#feed li')).map(li => li.textContent)")
        if victim in text and "down" in text], 2.0, what="the event in the feed")
    assert state in ("down", "ejected") and feed
    reason = _row(browser, victim).find_element("css selector", ".reason").text
    assert "exited" in reason or "fail" in reason, reason
    assert browser.console_errors() == []


def test_drain_on_a_row_drains_that_backend(live):
    h, browser, ids = live
    target = ids[1]
    _row(browser, target).find_element("css selector", "button.drain").click()
    _wait(lambda: h.call("GET", f"/servers/get?id={target}")[1]["admin"] == "draining", 5,
          what="the API showing it draining")
    _wait(lambda: _rows(browser)[target] == "draining", 3, what="the row showing draining")
    assert h.call("GET", f"/servers/get?id={ids[2]}")[1]["admin"] == "ready"  # only that one
    _row(browser, target).find_element("css selector", "button.ready").click()
    _wait(lambda: h.call("GET", f"/servers/get?id={target}")[1]["admin"] == "ready", 5, what="ready again")
    _row(browser, target).find_element("css selector", "button.drain").click()  # draining for the screenshot
    _wait(lambda: _rows(browser)[target] == "draining", 5, what="draining again")
    assert browser.console_errors() == []


def test_a_weight_set_on_the_page_is_what_the_api_reports(live):
    h, browser, ids = live
    target = ids[2]
    field = _row(browser, target).find_element("css selector", "input.weight")
    field.clear()
    field.send_keys("7")
    _row(browser, target).find_element("css selector", "button.set-weight").click()
    _wait(lambda: h.call("GET", f"/servers/get?id={target}")[1]["weight"] == 7, 5, what="weight 7 in the API")
    _wait(lambda: "weight" in " ".join(browser.script(
        "return Array.from(document.querySelectorAll('#feed li')).map(li => li.textContent)")), 3,
        what="the weight event in the feed")
    assert h.call("GET", f"/servers/get?id={ids[0]}")[1]["weight"] == 1
    assert browser.console_errors() == []


def test_a_server_added_and_removed_from_the_page(live):
    h, browser, ids = live
    browser.driver.find_element("css selector", "button.add").click()
    added = _wait(lambda: [s for s in h.call("GET", "/servers/list")[1] if s["id"] not in ids], 30, interval=0.2,
                  what="a fourth server")[0]
    h.extra_pids.add(added["pid"])
    _wait(lambda: _rows(browser).get(added["id"]) == "up", 10, what="its row, up")
    _row(browser, added["id"]).find_element("css selector", "button.remove").click()
    browser.driver.switch_to.alert.accept()
    _wait(lambda: all(s["id"] != added["id"] for s in h.call("GET", "/servers/list")[1]), 15, interval=0.2,
          what="the server removed")
    _wait(lambda: added["id"] not in _rows(browser), 3, what="its row gone")
    assert browser.console_errors() == []


def test_the_screenshot(live):
    h, browser, ids = live
    # Several seconds of samples in the charts.
    _wait(lambda: browser.script("return document.querySelectorAll('#chart-rps polyline')[0]"
                                 ".getAttribute('points').split(' ').length") >= 10, 15, interval=0.2,
          what="ten samples in the chart")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000
    assert browser.console_errors() == []


def test_with_a_token_the_page_without_it_shows_a_prompt_and_no_data(tmp_path):
    require_browser()
    from tests.manager.test_integration import Heimdall

    h = Heimdall(tmp_path / "heimdall", _config(free_base(5), token="s3cret"))
    try:
        h.wait_ready()
        with open_browser(tmp_path / "browser") as browser:
            browser.get(h.manager + "/dashboard")
            prompt = browser.driver.find_element("id", "token-prompt")
            _wait(prompt.is_displayed, 5, what="the token prompt")
            time.sleep(1.5)  # a stats second: still nothing shown
            assert not browser.driver.find_element("id", "dashboard").is_displayed()
            assert _rows(browser) == {}
            assert browser.script("return document.getElementById('rps').textContent") == "-"
            assert browser.script("return document.getElementById('feed').children.length") == 0
            assert browser.script("return sessionStorage.getItem('heimdall.token')") is None
            # The only console error: the refused stream (401).
            assert all("401" in e for e in browser.console_errors())
            # A wrong token is refused; the right one shows the data.
            field = browser.driver.find_element("id", "token-input")
            field.send_keys("wrong\n")
            _wait(lambda: "refused" in browser.driver.find_element("id", "token-message").text, 5,
                  what="the refusal")
            assert _rows(browser) == {}
            browser.driver.find_element("id", "token-input").send_keys("s3cret\n")
            _wait(lambda: len(_rows(browser)) == 3, 30, interval=0.1, what="the backends after the token")
            assert browser.script("return sessionStorage.getItem('heimdall.token')") == "s3cret"
            assert not prompt.is_displayed()
    finally:
        for server in h.call("GET", "/servers/list", token="s3cret")[1] if h.proc.poll() is None else []:
            h.extra_pids.add(server["pid"])
        h.kill_all()
