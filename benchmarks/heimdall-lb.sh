#!/usr/bin/env bash
# Runs heimdall in the foreground for ../shared/bench/run.sh --lb-cmd:
#   ../shared/bench/run.sh --all --lb-cmd "$PWD/benchmarks/heimdall-lb.sh" --lb-name heimdall
# It writes a config from the harness's BENCH_LB_PORT / BENCH_BACKENDS.
# HEIMDALL_ACCESS_LOG=1 keeps the access log on (off by default here, as
# the peers' configs have theirs off); HEIMDALL_PYTHON picks the interpreter.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${HEIMDALL_PYTHON:-$here/.venv/bin/python}
cfg=${BENCH_TMP:-$(mktemp -d)}/heimdall-bench.json
"$py" - "$cfg" <<'PY'
import json, os, sys
backends = [f"http://{b}" for b in os.environ["BENCH_BACKENDS"].split(",")]
config = {
    "listen": f"tcp:{os.environ['BENCH_LB_PORT']}:interface={os.environ.get('BENCH_LB_HOST', '127.0.0.1')}:backlog=4096",
    "strategy": os.environ.get("HEIMDALL_STRATEGY", "round_robin"),
    "backends": backends,
    "spawn": 0,
    "access_log": {"enabled": os.environ.get("HEIMDALL_ACCESS_LOG") == "1"},
    "manager": {"listen": "tcp:0:interface=127.0.0.1"},
}
json.dump(config, open(sys.argv[1], "w"))
PY
exec "$(dirname "$py")/twistd" -n --pidfile= heimdall --config "$cfg"
