#!/usr/bin/env bash
# Runs heimdall in the foreground for benchmarks/edge/edge.py: the TLS port
# (tls.listen, TLS 1.3 only, HTTP/2 by ALPN) on EDGE_TLS_PORT, the plain port
# on EDGE_PLAIN_PORT, both to EDGE_BACKENDS (host:port,...), round robin,
# access log off (as the peers'), the certificate EDGE_CERT / EDGE_KEY.
# HEIMDALL_PYTHON picks the interpreter (default: the worktree's .venv).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
py=${HEIMDALL_PYTHON:-$here/.venv/bin/python}
cfg=${EDGE_TMP:-$(mktemp -d)}/heimdall-edge-$$.json
"$py" - "$cfg" <<'PY'
import json, os, sys
env = os.environ
config = {
    "listen": f"tcp:{env['EDGE_PLAIN_PORT']}:interface=127.0.0.1:backlog=4096",
    "tls": {
        "listen": f"tcp:{env['EDGE_TLS_PORT']}:interface=127.0.0.1:backlog=4096",
        "certificates": [{"cert": env["EDGE_CERT"], "key": env["EDGE_KEY"]}],
        "min_version": "1.3",
        "http2": True,
    },
    "spawn": 0,
    "strategy": "round_robin",
    "backends": [f"http://{b}" for b in env["EDGE_BACKENDS"].split(",")],
    "access_log": {"enabled": env.get("HEIMDALL_ACCESS_LOG") == "1"},
    "manager": {"listen": f"tcp:{env.get('EDGE_MANAGER_PORT', '0')}:interface=127.0.0.1"},
}
json.dump(config, open(sys.argv[1], "w"), indent=1)
PY
exec "$(dirname "$py")/twistd" -n --pidfile= heimdall --config "$cfg"
