# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
CONFIG ?= config.json
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test install bench bench-pypy clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -e '.[test]'
	# twistd finds plugins through dropin.cache: build it now, not on first run.
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/twistd -n --pidfile= heimdall --config $(CONFIG)

# promtool checks /metrics in the tests.  Only the binary is taken from
# Debian's prometheus package: installing the package would also install
# (and on systemd machines start) a Prometheus server on :9090.
PROMTOOL = $(VENV)/bin/promtool
$(PROMTOOL): | $(PY)
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; else \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download prometheus 2>/dev/null || { apt-get update -q && apt-get download prometheus; }; } && \
	  dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool $(CURDIR)/$@ && rm -rf $$tmp; fi

# The browser tests drive Debian's Chromium through Debian's chromedriver
# (selenium is in the test extra); no browser is downloaded.
CHROMEDRIVER = /usr/bin/chromedriver
$(CHROMEDRIVER):
	apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }

test: install $(PROMTOOL) $(CHROMEDRIVER)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" HEIMDALL_TEST_STRICT=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info

# Side-by-side benchmark with nginx, HAProxy, Caddy and the Python baselines
# (../shared/bench; it installs what it needs).  Results: benchmarks/results/.
BENCH ?= ../shared/bench/run.sh
BENCH_ARGS ?= --all
bench: install
	$(BENCH) $(BENCH_ARGS) --lb-cmd "$(CURDIR)/benchmarks/heimdall-lb.sh" --lb-name heimdall --out benchmarks/results/$(shell date +%Y%m%d-%H%M%S)-cpython

# The same on PyPy: Debian's pypy3 is Python 3.9, where Twisted 26.4 is the
# newest release; only the proxy's own dependencies are installed there
# (treq's TLS stack needs a Rust build that PyPI does not ship for PyPy 3.9).
PYPY_VENV = .venv-pypy
$(PYPY_VENV)/bin/python:
	command -v pypy3 >/dev/null || (apt-get update -q && apt-get install -y -q pypy3 pypy3-venv)
	pypy3 -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/python -m pip -q install 'twisted==26.4.0' attrs zope.interface prometheus_client
	$(PYPY_VENV)/bin/python -m pip -q install --no-deps -e .
	$(PYPY_VENV)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

bench-pypy: $(PYPY_VENV)/bin/python
	HEIMDALL_PYTHON=$(CURDIR)/$(PYPY_VENV)/bin/python $(BENCH) --lb aiohttp,twisted-stock $(BENCH_PYPY_ARGS) --lb-cmd "$(CURDIR)/benchmarks/heimdall-lb.sh" --lb-name heimdall-pypy --out benchmarks/results/$(shell date +%Y%m%d-%H%M%S)-pypy
