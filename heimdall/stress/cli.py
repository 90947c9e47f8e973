"""
C{heimdall stress}: the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO, List, Optional

DESCRIPTION = """\
Send HTTP load to URL and report throughput, latency percentiles (HDR
histogram), status codes, errors and the spread of responses across
backends (read from a response header).

Load modes:
  closed loop (default, like wrk): each of the -c connections sends its next
    request as soon as the previous response is complete.  Latency is
    measured from the moment each request is sent, so a server stall delays
    the requests that would have been sent meanwhile and hides them from
    the percentiles ("coordinated omission").
  open loop (--rate R, like wrk2 or vegeta): requests are scheduled at R per
    second in total, whether or not earlier ones have finished; a request
    waits for a free connection when all -c are busy.  Latency is measured
    from each request's SCHEDULED send time, so waiting caused by a slow
    server is counted and coordinated omission does not hide stalls.
    Give enough connections (-c) for rate x latency.

Failover scenario (--scenario failover): runs load for -d, kills one
backend at --kill-at of the duration (default half way) and reports failed
requests (transport errors and 5xx) before, during and after, and how long
until traffic had fully moved off the killed backend.  Exit status 1 if any
request failed.
"""

EPILOG = """\
examples:
  heimdall stress http://127.0.0.1:8080/ -c 64 -d 10s
  heimdall stress http://127.0.0.1:8080/ -c 64 -d 30s --rate 2000 --report run.html
  heimdall stress http://127.0.0.1:8080/ -c 128 -d 10s --workers 2 --json run.json
  heimdall stress http://127.0.0.1:8080/echo -m POST -H 'Content-Type: application/json' --body @payload.json -n 1000
  heimdall stress http://127.0.0.1:8080/ -d 10s --scenario failover --kill-port 8082
  heimdall stress http://127.0.0.1:8080/ -d 10s --scenario failover --manager http://127.0.0.1:9090 --kill-port 8082
"""


def _duration(text: str) -> float:
    from heimdall.config.fields import parse_duration

    try:
        return float(text)  # plain seconds, as wrk takes them
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10, 10s, 500ms, 1m)") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _on_off(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("on", "yes", "true", "1"):
        return True
    if lowered in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimdall stress",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="target, http://host:port/path?query")
    load = parser.add_argument_group("load")
    load.add_argument("-c", "--connections", type=_positive_int, default=10, help="concurrent connections (default 10)")
    load.add_argument("-d", "--duration", type=_duration, help="how long: 10, 10s, 500ms, 1m (default 10s unless -n)")
    load.add_argument("-n", "--requests", type=_positive_int, help="how many requests (stops at -d too, if given)")
    load.add_argument(
        "--rate",
        type=_positive_float,
        help="open loop: requests per second in total; latency from the scheduled send time (see above)",
    )
    load.add_argument("--workers", type=_positive_int, default=1,
                      help="generator processes (default 1); use one per free core to saturate a fast target")
    load.add_argument("--timeout", type=_duration, default=10.0, help="per request, connect included (default 10s)")
    request = parser.add_argument_group("request")
    request.add_argument("-m", "--method", default="GET", help="HTTP method (default GET)")
    request.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")
    request.add_argument("--body", help="request body: text, or @FILE to read it from a file")
    request.add_argument("-k", "--keep-alive", type=_on_off, default=True, metavar="on|off",
                         help="reuse connections (default on); off opens one connection per request")
    request.add_argument("--no-keep-alive", dest="keep_alive", action="store_false",
                         help="same as --keep-alive off")
    output = parser.add_argument_group("output")
    output.add_argument("--backend-header", default="X-Backend",
                        help="response header naming the backend, for the distribution table (default X-Backend; "
                             "'' to skip)")
    output.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    output.add_argument("--report", metavar="FILE.html",
                        help="write a self-contained HTML report with charts")
    output.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    output.add_argument("--progress-interval", type=_duration, default=1.0,
                        help="seconds between progress lines when stdout is not a terminal (default 1)")
    scenario = parser.add_argument_group("scenario")
    scenario.add_argument("--scenario", choices=["failover"], help="failover: kill one backend during the run")
    scenario.add_argument("--kill-pid", type=_positive_int, metavar="PID", help="the backend process to signal")
    scenario.add_argument("--kill-port", type=_positive_int, metavar="PORT",
                          help="the backend's port: signal its listening process, or remove it through --manager")
    scenario.add_argument("--manager", metavar="URL",
                          help="heimdall's manager API: DELETE URL/servers/remove?port=PORT instead of a signal")
    scenario.add_argument("--manager-token", metavar="TOKEN", default=os.environ.get("HEIMDALL_MANAGER_TOKEN"),
                          help="bearer token for --manager (default: $HEIMDALL_MANAGER_TOKEN)")
    scenario.add_argument("--kill-signal", default="KILL", help="signal for --kill-pid/--kill-port (default KILL)")
    scenario.add_argument("--kill-at", type=float, default=0.5, help="when, as a fraction of -d (default 0.5)")
    return parser


def options_from_args(args: argparse.Namespace):
    from heimdall.stress.http import parse_header_arg
    from heimdall.stress.runner import StressOptions
    from heimdall.stress.scenario import KillPlan

    headers = tuple(parse_header_arg(h) for h in args.header)
    body = None
    if args.body is not None:
        if args.body.startswith("@"):
            with open(args.body[1:], "rb") as f:
                body = f.read()
        else:
            body = args.body.encode("utf-8")
    import signal as signal_module

    if not hasattr(signal_module, "SIG" + args.kill_signal.upper().replace("SIG", "", 1)):
        raise ValueError(f"unknown signal {args.kill_signal!r}")
    kill = None
    if args.kill_pid or args.kill_port or args.manager:
        if not args.scenario:
            raise ValueError("--kill-pid, --kill-port and --manager go with --scenario failover")
        kill = KillPlan(pid=args.kill_pid, port=args.kill_port, manager=args.manager, signal_name=args.kill_signal,
                        manager_token=args.manager_token)
    return StressOptions(
        url=args.url,
        connections=args.connections,
        duration=args.duration,
        requests=args.requests,
        rate=args.rate,
        method=args.method.upper(),
        headers=headers,
        body=body,
        keep_alive=args.keep_alive,
        timeout=args.timeout,
        workers=args.workers,
        backend_header=args.backend_header or None,
        quiet=args.quiet,
        progress_interval=args.progress_interval,
        scenario=args.scenario,
        kill=kill,
        kill_at=args.kill_at,
    )


def main(argv: Optional[List[str]] = None, out: Optional[IO[str]] = None) -> int:
    out = out if out is not None else sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    from heimdall.stress.http import Target

    try:
        options = options_from_args(args)
        Target.from_url(options.url)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    from heimdall.stress import report, runner
    from heimdall.stress.scenario import ScenarioError

    try:
        result = runner.run(options, out)
    except (OSError, RuntimeError, ScenarioError) as error:
        sys.stderr.write(f"heimdall stress: {error}\n")
        return 2
    out.write(report.text_report(result))
    if args.json:
        report.write_json(result, args.json)
        out.write(f"  JSON written to {args.json}\n")
    if args.report:
        report.write_html(result, args.report)
        out.write(f"  HTML report written to {args.report}\n")
    out.flush()
    if result.get("interrupted"):
        return 130  # as a shell reports SIGINT
    if result.get("scenario") is not None and not result["scenario"]["passed"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
