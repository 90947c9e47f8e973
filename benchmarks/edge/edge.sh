#!/usr/bin/env bash
# Entry point of the edge benchmark (see README.md beside this file):
#   benchmarks/edge/edge.sh [--rounds 3] [--lbs ...] [--modes ...]
# Installs what it needs first: the harness's tools (../shared/bench/setup.sh),
# h2load (nghttp2-client), the worktree's .venv (make install) and, for
# heimdall-pypy, .venv-pypy with h2 and the TLS stack.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bench=${EDGE_BENCH_DIR:-$repo/../shared/bench}
for t in wrk nginx haproxy caddy; do command -v $t >/dev/null || { "$bench/setup.sh"; break; }; done
command -v h2load >/dev/null || apt-get install -y -q nghttp2-client || { apt-get update -q && apt-get install -y -q nghttp2-client; }
make -C "$repo" --no-print-directory install >/dev/null
if [[ " $* " != *" --lbs "* || " $* " == *heimdall-pypy* ]]; then
  if ! "$repo/.venv-pypy/bin/python" -c 'import OpenSSL, h2, priority' 2>/dev/null; then
    stamp=".venv-pypy/.installed-$(cksum <"$repo/pyproject.toml" | cut -d' ' -f1)"
    make -C "$repo" --no-print-directory "$stamp" >/dev/null
    # The last TLS stack PyPI has PyPy 3.9 wheels for (see the Makefile).
    "$repo/.venv-pypy/bin/python" -m pip -q install 'cryptography==43.0.3' 'pyopenssl==25.1.0' \
      service_identity idna h2 priority
  fi
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$repo/.venv/bin/python" "$here/edge.py" "$@"
