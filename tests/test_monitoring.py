"""Monitoring (deploy/prometheus, deploy/grafana): the alert rules and their unit tests pass
promtool, the Prometheus configuration is valid, the dashboard and the rules name only the
metrics and labels docs/metrics.md documents, and a real Prometheus server scrapes a running
receiver and sender (adaptcast.demo.LoopbackStation) and finds the key series for the camera.

The promtool and server tests skip when Debian's `prometheus` package (prometheus, promtool)
is missing, unless ADAPTCAST_REQUIRE_PROMETHEUS=1 (.ci/run sets it after installing the
package), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from adaptcast.demo import CAMERA, LoopbackStation, StationSettings, free_port
from tests.conftest import REPO

REQUIRE_ENV = "ADAPTCAST_REQUIRE_PROMETHEUS"
DOCS = REPO / "docs" / "metrics.md"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "adaptcast.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = GRAFANA / "provisioning" / "dashboards" / "adaptcast.yml"
JOBS = ("adaptcast-receiver", "adaptcast-sender")

PROMQL_FUNCTIONS = {
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "acos", "acosh", "asin",
    "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "atan2", "inf", "nan"}
STANDARD_SERIES = {"up": set(), "process_resident_memory_bytes": set(), "process_cpu_seconds_total": set()}
"""Series Prometheus itself writes for every target, and prometheus-client's process collector's that
docs/metrics.md says both daemons serve (labels beyond job and instance)."""
TARGET_LABELS = {"job", "instance"}


# --- what docs/metrics.md lists -----------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    kind: str
    labels: frozenset[str]


def documented_metrics() -> dict[str, Documented]:
    """The metrics tables of docs/metrics.md: name -> type and labels."""
    metrics = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) < 5 or not cells[1].startswith("`adaptcast_"):
            continue
        name = cells[1].strip("`")
        metrics[name] = Documented(cells[2].split()[0], frozenset(re.findall(r"[a-z0-9_]+", cells[3].replace("`", ""))))
    assert len(metrics) > 30, f"could not read the metrics tables of {DOCS}"
    return metrics


def documented_series() -> dict[str, frozenset[str]]:
    """Every series name a scrape can hold (histograms: _bucket, _sum, _count) -> its labels."""
    series = {name: frozenset(labels) for name, labels in STANDARD_SERIES.items()}
    for name, metric in documented_metrics().items():
        series[name] = metric.labels
        if metric.kind == "histogram":
            series[f"{name}_bucket"] = metric.labels | {"le"}
            series[f"{name}_sum"] = series[f"{name}_count"] = metric.labels
    return series


# --- PromQL, read just enough to name what it uses -----------------------------------------------

STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
IDENT = r"(?<![\w.$:])[A-Za-z_:][A-Za-z0-9_:]*"


@dataclass
class PromQLNames:
    series: set[str]
    functions: set[str]
    matcher_labels: dict[str, set[str]]
    """Series name -> label names in its matchers."""
    grouping_labels: set[str]
    """Label names in by, without, on, ignoring, group_left and group_right."""
    unknown: set[str]


def promql_names(expr: str) -> PromQLNames:
    """The series, functions and labels a PromQL expression (Grafana variables allowed) names."""
    text = re.sub(r"\$\{?\w+\}?", "1", expr)  # $camera, ${camera}, $__rate_interval
    strings: list[str] = []
    text = re.sub(STRING, lambda m: strings.append(m.group(0)) or f'"{len(strings) - 1}"', text)
    matcher_labels: dict[str, set[str]] = {}
    for name, matchers in re.findall(rf"({IDENT})?\s*\{{([^{{}}]*)\}}", text):
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
        if "__name__" in labels:
            raise AssertionError(f"a {{__name__=...}} selector hides the metric name: {expr}")
        matcher_labels.setdefault(name, set()).update(labels)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouping: set[str] = set()
    for labels in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping.update(label.strip() for label in labels.split(",") if label.strip())
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r'"\d+"', " ", text)
    series, functions, unknown = set(), set(), set()
    for match in re.finditer(rf"({IDENT})(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if name.lower() in PROMQL_KEYWORDS:
            continue
        if call:
            (functions if name in PROMQL_FUNCTIONS else unknown).add(name)
        else:
            series.add(name)
    return PromQLNames(series, functions, matcher_labels, grouping, unknown)


def check_promql(expr: str, where: str) -> list[str]:
    """Problems with `expr`: series, labels or functions that docs/metrics.md or PromQL lack."""
    known = documented_series()
    names = promql_names(expr)
    problems = [f"{where}: unknown function {name}() in {expr!r}" for name in sorted(names.unknown)]
    problems += [f"{where}: {name} is not in docs/metrics.md: {expr!r}" for name in sorted(names.series - set(known))]
    if not names.series:
        problems.append(f"{where}: names no metric: {expr!r}")
    used = set().union(*(known.get(name, set()) for name in names.series)) | TARGET_LABELS
    for name, labels in names.matcher_labels.items():
        allowed = (known.get(name, set()) if name else used) | TARGET_LABELS
        problems += [f"{where}: {name or 'a selector'} has no label {label!r}: {expr!r}"
                     for label in sorted(labels - allowed)]
    problems += [f"{where}: no metric in it has the label {label!r}: {expr!r}"
                 for label in sorted(names.grouping_labels - used)]
    return problems


def test_promql_reader_finds_names():
    names = promql_names('histogram_quantile(0.95, sum by (le) (rate(a_bucket{camera="$camera", le!="x{y}"}'
                         '[$__rate_interval]))) / ignoring (model) b offset 5m > 1e3 and on (camera) c == bool 1')
    assert names.series == {"a_bucket", "b", "c"}
    assert names.functions == {"histogram_quantile", "sum", "rate"} and not names.unknown
    assert names.matcher_labels == {"a_bucket": {"camera", "le"}}
    assert names.grouping_labels == {"le", "model", "camera"}
    assert check_promql("rate(adaptcast_receiver_frames_decoded_total[1m])", "x")  # not documented
    assert check_promql('adaptcast_receiver_connected{worker="0"}', "x")  # no such label
    assert check_promql("sum by (reason) (adaptcast_receiver_connected)", "x")
    assert check_promql("frobnicate(adaptcast_receiver_connected)", "x")
    assert not check_promql('sum by (job, le) (rate(adaptcast_receiver_latency_seconds_bucket{camera="a"}[1m]))', "x")


# --- the alert rules ------------------------------------------------------------------------------


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_name_documented_metrics_and_say_which_camera():
    documented = documented_series()
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "AdaptcastTargetDown", "AdaptcastCameraDown", "AdaptcastCameraDisconnected", "AdaptcastReceiverNotDecoding",
        "AdaptcastFallbacksRising", "AdaptcastFittingSlow", "AdaptcastFitsSkipped", "AdaptcastDecodeWorkerRestarts",
        "AdaptcastLatencyHigh"}
    problems = []
    for rule in rules:
        name = rule["alert"]
        problems += check_promql(rule["expr"], name)
        if "for" not in rule:
            problems.append(f"{name}: no for: duration")
        if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{name}: severity is not critical or warning")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        # An alert on per-camera series says which camera in its summary and description.
        series = promql_names(rule["expr"]).series
        if series and all("camera" in documented.get(s, ()) for s in series):
            problems += [f"{name}: the {key} does not name the camera" for key in ("summary", "description")
                         if "$labels.camera" not in annotations.get(key, "")]
    assert not problems, "\n".join(problems)


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fired, quiet = set(), set()
    for test in tests["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts no test sees firing"
    assert names - quiet == set(), "alerts no test sees quiet"


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        reason = f"no {binary} binary on PATH (Debian: apt-get install --no-install-recommends prometheus)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    done = subprocess.run([require("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


def test_alert_rules_pass_promtool_check():
    done = promtool("check", "rules", ALERTS)
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, done.stdout


def test_alert_rules_pass_their_unit_tests():
    done = promtool("test", "rules", ALERT_TESTS)
    assert "SUCCESS" in done.stdout, done.stdout


def test_prometheus_config_scrapes_both_daemons_and_passes_promtool(tmp_path):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
               for job in config["scrape_configs"]}
    assert targets == {"adaptcast-receiver": ["receiver:8080"], "adaptcast-sender": ["sender:9101"]}
    # The rule file is where compose mounts it; check the configuration against the one here.
    config["rule_files"] = [str(ALERTS)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    done = promtool("check", "config", copy)
    assert "SUCCESS: 1 rule files found" in done.stdout, done.stdout


# --- Grafana ----------------------------------------------------------------------------------------


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard_panels(dashboard)
            for target in panel.get("targets", []) if target.get("expr")]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    datasources = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [("file", "/var/lib/grafana/dashboards")]


def test_dashboard_names_documented_metrics_per_camera():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] == "adaptcast"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    camera = variables["camera"]
    assert camera["datasource"]["uid"] == "prometheus"
    assert re.fullmatch(r"label_values\((\w+), camera\)", camera["definition"])
    assert camera["query"]["query"] == camera["definition"]
    problems = check_promql(re.fullmatch(r"label_values\((\w+), camera\)", camera["definition"]).group(1),
                            "the camera variable")

    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    repeated = [panel for panel in panels if panel.get("repeat") == "camera"]
    assert repeated, "nothing is repeated per camera"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"]), panel["title"]
    expressions = dashboard_expressions(dashboard)
    for title, expr in expressions:
        problems += check_promql(expr, f"panel {title!r}")
        # A query on per-camera series shows the selected camera only.
        series = promql_names(expr).series
        if series and all("camera" in documented_series()[s] for s in series if s in documented_series()):
            if expr.count('camera="$camera"') != len(re.findall(r"adaptcast_\w+", expr)):
                problems.append(f"panel {title!r}: a selector without camera=\"$camera\": {expr}")
    assert not problems, "\n".join(problems)

    every = " ".join(expr for _, expr in expressions)
    for metric in ("adaptcast_sender_sent_bytes_total", "adaptcast_sender_psnr_db",
                   "adaptcast_receiver_fallback_segments_total", "adaptcast_receiver_latency_seconds_bucket",
                   "adaptcast_sender_fit_realtime_factor", "adaptcast_receiver_frames_shown_total",
                   "adaptcast_sender_segments_encoded_total", "adaptcast_sender_frames_dropped_total",
                   "adaptcast_receiver_decode_worker_restarts_total", "adaptcast_receiver_active_streams",
                   # re-publication over RTSP and WHEP, and what issue 16 added
                   "adaptcast_receiver_h264_clients", "adaptcast_receiver_h264_sent_bytes_total",
                   "adaptcast_receiver_h264_encode_seconds_bucket", "adaptcast_receiver_rtsp_refused_total",
                   "adaptcast_receiver_whep_refused_total", "adaptcast_receiver_camera_quarantined_total",
                   "adaptcast_receiver_archive_paused", "adaptcast_receiver_sctp_aborts_total",
                   "adaptcast_receiver_viewer_refused_total", "process_resident_memory_bytes"):
        assert metric in every, f"no panel shows {metric}"


# --- a real Prometheus scraping a real receiver and sender ------------------------------------------


@dataclass
class Server:
    url: str
    station: LoopbackStation
    log: Path

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def logs(self) -> str:
        return self.log.read_text()[-3000:]


TARGETS_TIMEOUT, SERIES_TIMEOUT = 45.0, 30.0


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Prometheus server (1 s scrapes, the alert rules loaded) scraping one LoopbackStation."""
    binary = require("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        with LoopbackStation(StationSettings(port=0)) as station:
            receiver = urllib.parse.urlsplit(station.url).netloc
            sender = urllib.parse.urlsplit(station.sender_metrics_url).netloc
            config = {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": "adaptcast-receiver", "static_configs": [{"targets": [receiver]}]},
                    {"job_name": "adaptcast-sender", "static_configs": [{"targets": [sender]}]},
                ],
            }
            (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
            port = free_port(0)
            log = folder / "prometheus.log"
            with open(log, "wb") as output:
                process = subprocess.Popen(
                    [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                    stdout=output, stderr=subprocess.STDOUT, cwd=folder)
            server = Server(f"http://127.0.0.1:{port}", station, log)
            try:
                yield server
            finally:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_for(server: Server, what: str, timeout: float, check) -> object:
    """Poll `check` (None or False: not yet) until it gives something, failing after `timeout`."""
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline:
        server.station.check_alive()
        try:
            result = check()
        except (urllib.error.URLError, OSError, AssertionError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\nprometheus log:\n{server.logs()}")


def test_prometheus_scrapes_both_daemons(prometheus: Server):
    def targets_up() -> list[dict] | None:
        targets = prometheus.get("/api/v1/targets", state="active")["activeTargets"]
        up = sorted(t["labels"]["job"] for t in targets if t["health"] == "up")
        return targets if up == sorted(JOBS) else None

    started = time.monotonic()
    try:
        wait_for(prometheus, "every target up", TARGETS_TIMEOUT, targets_up)
    except pytest.fail.Exception as timeout:
        targets = prometheus.get("/api/v1/targets", state="active")["activeTargets"]
        raise AssertionError("targets not all up: " + json.dumps(
            [{k: t[k] for k in ("scrapeUrl", "health", "lastError")} for t in targets], indent=1)) from timeout

    key_series = {
        "frames shown": f'adaptcast_receiver_frames_shown_total{{camera="{CAMERA}"}} > 0',
        "latency histogram": f'adaptcast_receiver_latency_seconds_bucket{{camera="{CAMERA}", le="+Inf"}} > 0',
        "sender sent bytes": f'adaptcast_sender_sent_bytes_total{{camera="{CAMERA}", kind="latent"}} > 0',
        "segments encoded": f'sum(adaptcast_sender_segments_encoded_total{{camera="{CAMERA}"}}) > 0',
        "build info (receiver)": 'adaptcast_build_info{job="adaptcast-receiver", role="receiver"} == 1',
        "build info (sender)": 'adaptcast_build_info{job="adaptcast-sender", role="sender"} == 1',
    }
    missing = dict(key_series)
    deadline = time.monotonic() + SERIES_TIMEOUT
    while missing and time.monotonic() < deadline:
        prometheus.station.check_alive()
        missing = {what: expr for what, expr in missing.items() if not prometheus.query(expr)}
        time.sleep(0.5)
    assert not missing, (f"series missing after {time.monotonic() - started:.0f} s of scraping: "
                         + "; ".join(f"{what} ({expr})" for what, expr in missing.items()))


def test_prometheus_evaluates_the_alert_rules(prometheus: Server):
    names = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> list[dict] | None:
        rules = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", "0001").startswith("2") for rule in rules) else None

    rules = wait_for(prometheus, "the alert rules evaluated", 20, evaluated)
    assert {rule["name"] for rule in rules} == names
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []


def test_dashboard_queries_and_camera_variable_run_on_prometheus(prometheus: Server):
    wait_for(prometheus, f"camera {CAMERA} among the camera variable's values", 30,
             lambda: CAMERA in prometheus.get("/api/v1/label/camera/values",
                                              **{"match[]": "adaptcast_receiver_connected"}))
    for _title, expr in dashboard_expressions(json.loads(DASHBOARD.read_text())):
        query = expr.replace("$camera", CAMERA).replace("$__rate_interval", "30s")
        prometheus.query(query)  # a query Prometheus refuses raises here with its error
