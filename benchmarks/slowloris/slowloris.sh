#!/usr/bin/env bash
# Entry point of the slowloris / slow POST benchmark (see README.md beside this file):
#   benchmarks/slowloris/slowloris.sh [--rounds 3] [--lbs heimdall,haproxy]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bench=${EDGE_BENCH_DIR:-$repo/../shared/bench}
for t in wrk nginx haproxy; do command -v $t >/dev/null || { "$bench/setup.sh"; break; }; done
command -v slowhttptest >/dev/null || apt-get install -y -q slowhttptest || { apt-get update -q && apt-get install -y -q slowhttptest; }
make -C "$repo" --no-print-directory install >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$repo/.venv/bin/python" "$here/slowloris.py" "$@"
