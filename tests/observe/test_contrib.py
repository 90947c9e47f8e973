"""
The files for the Prometheus ecosystem in contrib/: the alerting rules pass
`promtool check rules` and their own `promtool test rules`; the Grafana
dashboard is well formed; and every metric the dashboard and the rules
name, with every label they match on, exists in the /metrics of a real
heimdall (twistd, spawned demo backends, active health checks) after some
traffic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.netutil import free_port, require
from tests.processes import HeimdallProcess, free_base

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "heimdall.json"

# Labels Prometheus attaches to every scraped series itself.
TARGET_LABELS = {"job", "instance"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def _promtool():
    beside = os.path.join(os.path.dirname(sys.executable), "promtool")
    return shutil.which("promtool") or (beside if os.access(beside, os.X_OK) else None)


# -- reading PromQL ------------------------------------------------------------------


def _without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_selectors(expr: str):
    """
    (metric name, label names matched) for every series selector in a
    PromQL expression: label matchers, string literals, range and subquery
    brackets, grouping label lists, function names, keywords and numbers are
    told apart from metric names.  Grafana's variables ($job, $__interval,
    ${name}) are fine anywhere.
    """
    expr = re.sub(r"\$\{?\w+\}?", "1m", expr)
    # Label matchers first, while the strings in them are intact.
    matchers = {}

    def keep(match):
        key = f"\x01{len(matchers)}\x01"
        matchers[key] = re.findall(r"(" + _NAME + r')\s*(?:=~|!~|!=|=)\s*"', match.group(0))
        return key

    expr = re.sub(r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}', keep, expr)
    expr = _without_strings(expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    selectors = []
    for match in re.finditer(r"(?<![\w.])(" + _NAME + r")(\s*\x01\d+\x01)?", expr):
        name, selector = match.group(1), match.group(2)
        after = expr[match.end():].lstrip()
        if after.startswith("(") or name.lower() in _KEYWORDS or re.fullmatch(r"\d\w*", name):
            continue
        labels = matchers[selector.strip()] if selector else []
        selectors.append((name, tuple(labels)))
    return selectors


@pytest.mark.parametrize(
    "expr, expected",
    [
        ('sum by (backend) (rate(heimdall_requests_total{job=~"$job", code="5xx"}[$__rate_interval]))',
         [("heimdall_requests_total", ("job", "code"))]),
        ("histogram_quantile(0.99, sum by (le, backend) (rate(x_bucket[5m]))) > 1e3",
         [("x_bucket", ())]),
        ('a{s="{}[]by(x)"} / on (instance) group_left (v) b offset 5m and bool c unless d{e!~"f"}',
         [("a", ("s",)), ("b", ()), ("c", ()), ("d", ("e",))]),
        ("max_over_time(up[1h:1m]) == inf", [("up", ())]),
    ],
)
def test_metric_selectors_reads_promql(expr, expected):
    assert metric_selectors(expr) == expected


# -- the files ------------------------------------------------------------------------


def _rule_expressions():
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def _panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def _dashboard_expressions():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", ()):
            exprs[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert inner, query
            exprs[f"variable {variable['name']}"] = inner.group(1)
    return exprs


def test_promtool_checks_and_tests_the_rules():
    require(_promtool() is not None, "promtool (make test extracts it from Debian's prometheus)")
    check = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_rule_expressions())} rules found" in check.stdout
    tested = subprocess.run([_promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            timeout=60, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_cover_what_operators_alert_on():
    names = set(_rule_expressions())
    assert {"HeimdallBackendDown", "HeimdallAllBackendsDown", "HeimdallHighErrorRatio", "HeimdallHighP99Latency",
            "HeimdallBackendEjected"} <= names
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # Every rule is also exercised by the promtool unit tests, and shown to
    # fire there (a case that only expects silence passes for a rule that
    # can never fire).
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    assert {case["alertname"] for case in cases} == names
    assert {case["alertname"] for case in cases if case.get("exp_alerts")} == names


def test_grafana_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "heimdall" and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], target["expr"]
    # No two panels overlap.
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
    rows = {panel["title"] for panel in panels if panel["type"] == "row"}
    assert {"Traffic", "Errors", "Latency", "Backends: health and ejections", "Upstream connections",
            "Retries"} <= rows


# -- against a real heimdall -------------------------------------------------------


def _exposition(text):
    """
    {sample name: set of label names} and {family name: type} from the
    Prometheus text format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples, types


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """
    /metrics of a twistd heimdall with 2 spawned demo backends, health
    checks every 200 ms and outlier detection, after traffic.
    """
    proxy_port, manager_port = free_port(), free_port()
    config = {
        "listen": f"tcp:{proxy_port}:interface=127.0.0.1",
        "strategy": "round_robin",
        "spawn": 2,
        "manager": {"listen": f"tcp:{manager_port}:interface=127.0.0.1", "base_port": free_base(2)},
        "health": {"type": "http", "path": "/health", "interval": "200ms", "down_interval": "200ms",
                   "outlier": {"enabled": True}},
        "access_log": {"enabled": False},
    }
    process = HeimdallProcess(tmp_path_factory.mktemp("contrib"), config)
    try:
        metrics_url = f"http://127.0.0.1:{manager_port}/metrics"
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            assert process.proc.poll() is None, process.output()
            try:
                with urllib.request.urlopen(metrics_url, timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                text = ""
            if 'heimdall_pool_backends_eligible{service="default"} 2.0' in text and "heimdall_backend_last_check_success{" in text:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"heimdall's backends never became healthy:\n{text}\n{process.output()}")
        for i in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/item/{i}", timeout=5) as response:
                assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as error:  # a 5xx, for code="5xx"
            urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/status/500", timeout=5)
        assert error.value.code == 500
        error.value.close()
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            yield response.read().decode()
    finally:
        process.stop()


def _check_names(exprs, scraped):
    samples, types = _exposition(scraped)
    missing = []
    for where, expr in exprs.items():
        selectors = metric_selectors(expr)
        assert selectors, (where, expr)
        for name, labels in selectors:
            assert name.startswith("heimdall_"), (where, name)
            if name not in samples:
                missing.append(f"{where}: {name}")
                continue
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in types:
                    assert types[name[: -len(suffix)]] == "histogram", (where, name)
            unknown = set(labels) - samples[name] - TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"
    assert not missing, "not in /metrics:\n" + "\n".join(missing)


def test_every_metric_the_rules_name_is_in_metrics(scraped):
    _check_names(_rule_expressions(), scraped)


def test_every_metric_the_dashboard_names_is_in_metrics(scraped):
    exprs = _dashboard_expressions()
    assert len(exprs) > 25
    _check_names(exprs, scraped)
    # And every label value the dashboard matches on exactly is one heimdall uses.
    values = set(re.findall(r'(?:state|code|to|result)="([^"]+)"', scraped))
    for expr in list(exprs.values()) + list(_rule_expressions().values()):
        for value in re.findall(r'(?:state|code|to|result)!?="([^"]+)"', expr):
            assert value in values, (value, expr)
