#!/usr/bin/env bash
# heimdall behind 1,000 routes, for ../shared/bench/run.sh --lb-cmd, to set
# beside heimdall-lb.sh (no routes) and show the per-request cost of routing:
#   make bench BENCH_ARGS="--lb heimdall" ... --lb-cmd "$PWD/benchmarks/heimdall-lb-routes.sh"
# or: make bench-routes (both variants in one run).
# The table is 999 routes that do not match the benchmark's requests
# (exact hosts, wildcards, path prefixes, a third each) and, last, one
# catch-all route to the service with the harness's backends: every request
# is looked up through the whole table. HEIMDALL_ROUTES sets the count.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${HEIMDALL_PYTHON:-$here/.venv/bin/python}
cfg=${BENCH_TMP:-$(mktemp -d)}/heimdall-bench-routes.json
"$py" - "$cfg" <<'PY'
import json, os, sys
backends = [f"http://{b}" for b in os.environ["BENCH_BACKENDS"].split(",")]
count = int(os.environ.get("HEIMDALL_ROUTES", "1000"))
routes = []
for i in range(count - 1):
    kind = i % 3
    if kind == 0:
        match = {"host": f"svc{i}.example.com"}
    elif kind == 1:
        match = {"host": f"*.tenant{i}.example.net", "path_prefix": "/api/"}
    else:
        match = {"path_prefix": f"/svc{i}/"}
    routes.append({"match": match, "service": "other"})
routes.append({"match": {"path_prefix": "/"}, "service": "web"})
config = {
    "listen": f"tcp:{os.environ['BENCH_LB_PORT']}:interface={os.environ.get('BENCH_LB_HOST', '127.0.0.1')}:backlog=4096",
    "services": {
        "web": {"backends": backends, "strategy": os.environ.get("HEIMDALL_STRATEGY", "round_robin")},
        "other": {"backends": backends[:1]},
    },
    "routes": routes,
    "spawn": 0,
    "access_log": {"enabled": os.environ.get("HEIMDALL_ACCESS_LOG") == "1"},
    "manager": {"listen": "tcp:0:interface=127.0.0.1"},
}
json.dump(config, open(sys.argv[1], "w"))
PY
exec "$(dirname "$py")/twistd" -n --pidfile= heimdall --config "$cfg"
