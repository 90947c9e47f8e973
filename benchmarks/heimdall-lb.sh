#!/usr/bin/env bash
# Runs heimdall in the foreground for ../shared/bench/run.sh --lb-cmd:
#   ../shared/bench/run.sh --all --lb-cmd "$PWD/benchmarks/heimdall-lb.sh" --lb-name heimdall
# It writes a config from the harness's BENCH_LB_PORT / BENCH_BACKENDS.
# HEIMDALL_ACCESS_LOG=1 keeps the access log on (off by default here, as
# the peers' configs have theirs off); HEIMDALL_PYTHON picks the interpreter.
#
# HEIMDALL_ROUTES=N puts heimdall behind N routes, to show the per-request
# cost of routing (make bench-routes runs N=1 and N=1000): N-1 routes that
# do not match the benchmark's requests (exact hosts, wildcards, path
# prefixes, a third each) and, last, one catch-all route to the service with
# the harness's backends, so every request is looked up through the whole
# table.  Unset: no routes, the top-level backends.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${HEIMDALL_PYTHON:-$here/.venv/bin/python}
cfg=${BENCH_TMP:-$(mktemp -d)}/heimdall-bench${HEIMDALL_ROUTES:+-routes}.json
"$py" - "$cfg" <<'PY'
import json, os, sys
backends = [f"http://{b}" for b in os.environ["BENCH_BACKENDS"].split(",")]
strategy = os.environ.get("HEIMDALL_STRATEGY", "round_robin")
config = {
    "listen": f"tcp:{os.environ['BENCH_LB_PORT']}:interface={os.environ.get('BENCH_LB_HOST', '127.0.0.1')}:backlog=4096",
    "spawn": 0,
    "access_log": {"enabled": os.environ.get("HEIMDALL_ACCESS_LOG") == "1"},
    "manager": {"listen": "tcp:0:interface=127.0.0.1"},
}
count = os.environ.get("HEIMDALL_ROUTES")
if count:
    routes = []
    for i in range(int(count) - 1):
        kind = i % 3
        if kind == 0:
            match = {"host": f"svc{i}.example.com"}
        elif kind == 1:
            match = {"host": f"*.tenant{i}.example.net", "path_prefix": "/api/"}
        else:
            match = {"path_prefix": f"/svc{i}/"}
        routes.append({"match": match, "service": "other"})
    routes.append({"match": {"path_prefix": "/"}, "service": "web"})
    config["services"] = {
        "web": {"backends": backends, "strategy": strategy},
        "other": {"backends": backends[:1]},
    }
    config["routes"] = routes
else:
    config["strategy"] = strategy
    config["backends"] = backends
json.dump(config, open(sys.argv[1], "w"))
PY
exec "$(dirname "$py")/twistd" -n --pidfile= heimdall --config "$cfg"
