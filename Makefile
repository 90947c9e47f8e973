# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
CONFIG ?= config.json
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# twistd finds plugins through dropin.cache: built at install, not on first run.
PLUGIN_CACHE = -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

.PHONY: run test test-pypy install bench bench-routes bench-pypy clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -e '.[test]'
	$(PY) $(PLUGIN_CACHE)
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
	$(MAKE) --no-print-directory test-pypy

clean:
	rm -rf $(VENV) $(PYPY_VENV) build dist *.egg-info

# Side-by-side benchmark with nginx, HAProxy, Caddy and the Python baselines
# (../shared/bench; it installs what it needs).  Results: benchmarks/results/.
BENCH ?= ../shared/bench/run.sh
BENCH_ARGS ?= --all
bench: install
	$(BENCH) $(BENCH_ARGS) --lb-cmd "$(CURDIR)/benchmarks/heimdall-lb.sh" --lb-name heimdall --out benchmarks/results/$(shell date +%Y%m%d-%H%M%S)-cpython

# The per-request cost of routing: heimdall with 1 route and with 1,000
# routes (999 that do not match, then a catch-all), one run each, heimdall
# only (BENCH_ROUTES_ARGS adds peers or options).
BENCH_ROUTES_ARGS ?=
bench-routes: install
	for n in 1 1000; do HEIMDALL_ROUTES=$$n $(BENCH) $(BENCH_ROUTES_ARGS) --lb-cmd "$(CURDIR)/benchmarks/heimdall-lb.sh" --lb-name heimdall-$$n-routes --out benchmarks/results/$(shell date +%Y%m%d-%H%M%S)-routes-$$n || exit 1; done

# The same on PyPy: Debian's pypy3 is Python 3.9, where Twisted 26.4 is the
# newest release; only the proxy's own dependencies are installed for the
# benchmark (the tests add theirs below).  As for CPython, the venv is one
# target and what is installed in it a stamp, so an install that failed
# halfway is redone by the next make.
PYPY_VENV = .venv-pypy
PYPY      = $(PYPY_VENV)/bin/python
PYPY_PIP  = $(PYPY) -m pip --disable-pip-version-check -q
PYPY_DEPS = 'twisted==26.4.0' attrs zope.interface prometheus_client
PYPY_STAMP = $(PYPY_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
$(PYPY):
	{ command -v pypy3 >/dev/null && pypy3 -c "import ensurepip" 2>/dev/null; } || \
	  apt-get install -y -q pypy3 pypy3-venv || { apt-get update -q && apt-get install -y -q pypy3 pypy3-venv; }
	pypy3 -m venv $(PYPY_VENV)

$(PYPY_STAMP): $(PYPY) pyproject.toml
	$(PYPY_PIP) install $(PYPY_DEPS)
	$(PYPY_PIP) install --no-deps -e .
	$(PYPY) $(PLUGIN_CACHE)
	rm -f $(PYPY_VENV)/.installed-* && touch $@

# What the PyPy tests need on top.  Twisted 26.4.0 (the newest for Python
# 3.9) asks for pyOpenSSL>=25.2, which needs a cryptography that PyPI has no
# PyPy 3.9 wheel for; so the TLS stack stays at the last versions with
# wheels (cryptography 43.0.3, pyOpenSSL 25.1.0, enough for heimdall's TLS
# and the tests' trustme certificates) and treq comes without its twisted[tls] requirement (with it, pip
# backtracks for minutes down to treq 15).
PYPY_TEST_DEPS = $(PYPY_DEPS) 'cryptography==43.0.3' 'pyopenssl==25.1.0' service_identity idna \
  hyperlink incremental multipart typing_extensions pytest pytest-twisted hypothesis websockets h11 \
  h2 priority trustme
PYPY_TEST_STAMP = $(PYPY_VENV)/.test-installed-$(shell echo "$(PYPY_TEST_DEPS)" | cksum | cut -d' ' -f1)
$(PYPY_TEST_STAMP): $(PYPY_STAMP)
	$(PYPY_PIP) install $(PYPY_TEST_DEPS)
	$(PYPY_PIP) install --no-deps treq
	rm -f $(PYPY_VENV)/.test-installed-* && touch $@

# The data path (proxy, pool, strategies, health checks, failover, TLS and
# HTTP/2, graceful shutdown) again on
# PyPy 3.9, Debian's pypy3; its time is printed at the end.  Tests marked
# cpython_only (a dependency the PyPy venv lacks) are deselected there.
PYPY_TESTS ?= tests/proxy tests/pool tests/strategies tests/health tests/tls tests/lifecycle
test-pypy: $(PYPY_TEST_STAMP)
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(PYPY_VENV)/bin:$$PATH" HEIMDALL_TEST_STRICT=1 $(PYPY) -m pytest -q \
	  -m "not cpython_only" $(PYPY_TESTS) $(PYTEST_PYPY_ARGS); rc=$$?; \
	echo "PyPy data-path tests ($(PYPY_TESTS)): $$(( $$(date +%s) - start )) s"; exit $$rc

bench-pypy: $(PYPY_STAMP)
	HEIMDALL_PYTHON=$(CURDIR)/$(PYPY) $(BENCH) --lb aiohttp,twisted-stock $(BENCH_PYPY_ARGS) --lb-cmd "$(CURDIR)/benchmarks/heimdall-lb.sh" --lb-name heimdall-pypy --out benchmarks/results/$(shell date +%Y%m%d-%H%M%S)-pypy
