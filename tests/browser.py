"""
A real browser for the tests: Debian's headless Chromium driven by
Selenium through Debian's chromedriver (`make test` installs both, and
selenium from PyPI).  Nothing is downloaded at run time: the driver and the
browser are named by path, so Selenium's own driver manager never runs.

Use the C{browser} fixture (registered in tests/conftest.py)::

    def test_page(browser):
        browser.get("http://127.0.0.1:PORT/dashboard")
        ...
        assert browser.console_errors() == []

or, for another scope, C{with open_browser(directory) as browser: ...}.
Each browser has a fresh profile in a temporary directory, and is quit
(Chromium and chromedriver both end) when the test ends, pass or fail.
Under `make test` (HEIMDALL_TEST_STRICT=1) a missing Chromium, chromedriver
or selenium fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from tests.netutil import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Headless, no sandbox (the tests run as root), and nothing that talks to
#: the network on its own (component updates, sync, QUIC probes, first run).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1024",
)


def missing() -> Optional[str]:
    """
    What is missing for a browser test, or None when all is there.
    """
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium ({CHROMIUM}, Debian's chromium)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return f"chromedriver ({CHROMEDRIVER}, Debian's chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium (the test extra: pip install -e '.[test]')"
    return None


def require_browser() -> None:
    what = missing()
    require(what is None, what or "")


class Browser:
    """
    A Selenium WebDriver (C{driver}) and the console messages it logged.
    """

    def __init__(self, driver) -> None:
        self.driver = driver
        self._console: List[dict] = []

    def get(self, url: str) -> None:
        self.driver.get(url)

    def console(self) -> List[dict]:
        """
        Every console message so far (each: level, message, source,
        timestamp), kept across calls (the driver hands each out once).
        """
        self._console.extend(self.driver.get_log("browser"))
        return list(self._console)

    def console_errors(self) -> List[str]:
        """
        The console's errors so far: uncaught exceptions, failed loads,
        C{console.error} calls.
        """
        return [entry["message"] for entry in self.console() if entry.get("level") == "SEVERE"]

    def script(self, source: str, *args):
        return self.driver.execute_script(source, *args)

    def element_size(self, element) -> tuple:
        """
        The rendered (width, height) of an element, in CSS pixels.
        """
        return tuple(self.script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];",
                                 element))

    def screenshot(self, path) -> None:
        self.driver.save_screenshot(str(path))


@contextlib.contextmanager
def open_browser(directory: Optional[Path] = None, width: int = 1280, height: int = 1024) -> Iterator[Browser]:
    """
    A headless Chromium with a fresh profile under C{directory} (a new
    temporary directory by default), quit on exit.
    """
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    own = directory is None
    base = Path(tempfile.mkdtemp(prefix="heimdall-browser-")) if own else Path(directory)
    profile = base / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options = Options()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_ARGS:
        if argument.startswith("--window-size="):
            argument = f"--window-size={width},{height}"
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(base / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield Browser(driver)
    finally:
        try:
            driver.quit()
        finally:
            service.stop()
            if own:
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    """
    A headless Chromium for one test (see the module's docstring).
    """
    with open_browser(tmp_path / "browser") as opened:
        yield opened
