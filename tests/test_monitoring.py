"""The monitoring artefacts against what the running suite really serves.

`k8s/components/monitoring/` holds the Prometheus rules (`alerts.yaml`) and the Grafana dashboard
(`dashboard.json`) as a kustomize Component; `docs/metrics.md` documents every metric family and
`docs/runbook.md` every alert. Here: every expression parses; every metric, label and label value
they select exists in a live scrape of the whole suite (all four services as real processes,
Redis, a fake LLM and a fake Open-Meteo, driven through turns that touch every service); the
metrics table equals the families the suite exposes, with their types, labels, label values and
services; every alert is annotated and has its runbook section; the rule file has Prometheus'
structure; the component renders with kubectl and carries the files unchanged.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from chatagent.v1 import chat_pb2
from tests.support.fake_open_meteo import fake_open_meteo
from tests.support.fake_openai import Reply, fake_openai
from tests.support.redis_server import redis_server
from tests.support.suite import whole_suite

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "k8s" / "components" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK = ROOT / "docs" / "runbook.md"

SERVICES = ("tools", "emotion", "tts", "orchestrator")
# prometheus_client's default collectors: served by every process, not documented.
DEFAULT_PREFIXES = ("process_", "python_")
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Grafana's own variables, replaced by a value of their kind before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
PROMETHEUS_DURATION = re.compile(
    r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$"
)
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ALTERNATION = re.compile(r"^[\w.+-]+(\|[\w.+-]+)*$")
MODEL = "fake-model"


# -- the live suite -------------------------------------------------------------------------------


def _llm_reply(body: dict[str, Any]) -> Reply:
    """The fake LLM: after a tool result, a reply; asked about the weather, a weather call."""
    messages: list[dict[str, Any]] = body.get("messages", [])
    if any(message.get("role") == "tool" for message in messages):
        return Reply(content="お天気を調べたにゃん。")
    asked: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text = str(asked.get("content", ""))
    if "天気" in text:
        place = "大阪" if "大阪" in text else "東京"
        return Reply(
            tool_calls=[{"id": "call-1", "name": "get_weather", "arguments": {"place": place}}]
        )
    return Reply(content="こんにちはにゃん！")


@pytest.fixture(scope="module")
def scrapes() -> dict[str, str]:
    """Each service's /metrics after turns that exercise every service: a spoken greeting, a
    weather answer, a weather lookup whose upstream fails (the tool falls back), a message with
    an emoji, a rate-limited turn, a usage report and an erase. The processes are stopped
    before the tests read the scrapes."""
    with ExitStack() as stack:
        weather = stack.enter_context(fake_open_meteo())
        llm = stack.enter_context(fake_openai())
        llm.responder = _llm_reply
        redis_url = stack.enter_context(redis_server())
        suite = stack.enter_context(
            whole_suite(
                per_service={
                    "tools": {
                        "OPEN_METEO_GEOCODING_URL": weather.geocoding_url,
                        "OPEN_METEO_FORECAST_URL": weather.forecast_url,
                    },
                    "orchestrator": {
                        "REDIS_URL": redis_url,
                        "OPENAI_BASE_URL": llm.base_url,
                        "OPENAI_API_KEY": "test-key",
                        "LLM_MODEL": MODEL,
                        "LLM_PRICES": json.dumps({MODEL: [0.15, 0.6]}),
                        # Two turns at once per user, then one a minute: u1's third is refused.
                        "USER_BURST": "2",
                        "USER_RATE_PER_MINUTE": "1",
                    },
                }
            )
        )
        chat = suite.chat
        spoken = chat.Chat(
            chat_pb2.ChatRequest(user_id="u1", message="こんにちは", include_audio=True), timeout=30
        )
        assert spoken.audio, spoken.degraded
        answered = chat.Chat(
            chat_pb2.ChatRequest(user_id="u1", message="東京の天気は？"), timeout=30
        )
        assert [c.name for c in answered.tool_calls] == ["get_weather"]
        weather.status = 500
        fell_back = chat.Chat(
            chat_pb2.ChatRequest(user_id="u2", message="大阪の天気は？"), timeout=30
        )
        assert "tools" in fell_back.degraded, fell_back.degraded
        chat.Chat(chat_pb2.ChatRequest(user_id="u3", message="猫が好き😺"), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            chat.Chat(chat_pb2.ChatRequest(user_id="u1", message="またね"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        chat.GetUsage(chat_pb2.GetUsageRequest(user_id="u1"), timeout=10)
        chat.DeleteUserData(chat_pb2.DeleteUserDataRequest(user_id="u3"), timeout=10)
        texts = {name: suite.scrape(name) for name in SERVICES}
    return texts


@dataclass(frozen=True)
class Family:
    """One metric family as a scrape shows it, under the name PromQL selects it by."""

    name: str  # counters with `_total`, histograms by their base name
    type: str
    samples: tuple[Sample, ...]
    services: frozenset[str]

    def series_names(self) -> frozenset[str]:
        if self.type == "histogram":
            return frozenset(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return frozenset({self.name})

    def label_names(self) -> frozenset[str]:
        return frozenset(name for s in self.samples for name in s.labels if name != "le")


def _selected_name(family_name: str, kind: str) -> str:
    # prometheus_client's parser names a counter family without the `_total` its series carry.
    return f"{family_name}_total" if kind == "counter" else family_name


@pytest.fixture(scope="module")
def exposed(scrapes: dict[str, str]) -> dict[str, Family]:
    """The suite's metric families by name, without the default collectors and `_created`."""
    found: dict[str, tuple[str, list[Sample], set[str]]] = {}
    for service, text in scrapes.items():
        for family in text_string_to_metric_families(text):
            if family.name.startswith(DEFAULT_PREFIXES) or family.name.endswith("_created"):
                continue
            name = _selected_name(family.name, family.type)
            kind, samples, services = found.setdefault(name, (family.type, [], set()))
            assert kind == family.type, (
                f"{name} is a {kind} in one service, a {family.type} in {service}"
            )
            samples.extend(family.samples)
            services.add(service)
    return {
        name: Family(name, kind, tuple(samples), frozenset(services))
        for name, (kind, samples, services) in found.items()
    }


# -- docs/metrics.md -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    name: str
    type: str
    labels: tuple[str, ...]
    # Label -> its complete set of values, or None for an open set (described in italics).
    values: dict[str, frozenset[str] | None]
    services: frozenset[str]


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [part.strip().replace("\\|", "|") for part in parts]


def _documented() -> dict[str, Documented]:
    rows: dict[str, Documented] = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = _cells(line)
        assert len(cells) == 6, f"a metrics row has 6 cells: {line}"
        name_cell, kind, label_cell, value_cell, served_cell, meaning = cells
        name = name_cell.strip("`")
        assert name not in rows, f"{name} is documented twice"
        labels = tuple(re.findall(r"`([^`]+)`", label_cell))
        values: dict[str, frozenset[str] | None] = {}
        for part in (p.strip() for p in value_cell.split(";")):
            inherited = re.fullmatch(r"as `([^`]+)`", part)
            if inherited:
                values.update(rows[inherited.group(1)].values)
                continue
            listed = re.fullmatch(r"`([^`]+)`:\s*(.+)", part)
            if listed:
                label, described = listed.groups()
                named = frozenset(re.findall(r"`([^`]+)`", described))
                values[label] = None if "*" in described else named
        served = (
            frozenset(SERVICES)
            if served_cell == "all"
            else frozenset(s.strip() for s in served_cell.split(","))
        )
        assert meaning, f"{name} says what it means"
        rows[name] = Documented(name, kind, labels, values, served)
    return rows


DOCUMENTED = _documented()


def test_the_metrics_table_is_read() -> None:
    # The parser above finds the table (a reformatted table would otherwise test nothing).
    assert len(DOCUMENTED) >= 30
    outcomes = {"ok", "degraded", "replayed", "aborted", "deadline_exceeded"}
    assert DOCUMENTED["chatagent_turns_total"].values["outcome"] == frozenset(outcomes)


def test_each_documented_label_has_its_values_and_each_service_is_known() -> None:
    for row in DOCUMENTED.values():
        assert row.type in {"counter", "gauge", "histogram"}, row.name
        assert set(row.values) == set(row.labels), f"{row.name}: the values of every label"
        assert row.services <= set(SERVICES), row.name


def test_the_table_lists_every_family_the_suite_exposes(exposed: dict[str, Family]) -> None:
    assert set(DOCUMENTED) == set(exposed)


def test_documented_types_and_services_match_the_scrape(exposed: dict[str, Family]) -> None:
    mismatched = {
        name: (
            (row.type, sorted(row.services)),
            (exposed[name].type, sorted(exposed[name].services)),
        )
        for name, row in DOCUMENTED.items()
        if name in exposed
        and (row.type, row.services) != (exposed[name].type, exposed[name].services)
    }
    assert not mismatched


def test_documented_labels_match_the_scrape(exposed: dict[str, Family]) -> None:
    # A family without samples yet (a counter nothing has incremented) shows no labels: the
    # declarations below cover it.
    sampled = {name: family for name, family in exposed.items() if family.samples}
    assert len(sampled) >= 30, sorted(set(exposed) - set(sampled))
    mismatched = {
        name: (sorted(DOCUMENTED[name].labels), sorted(family.label_names()))
        for name, family in sampled.items()
        if name in DOCUMENTED and set(DOCUMENTED[name].labels) != family.label_names()
    }
    assert not mismatched


def test_every_label_value_seen_is_documented(exposed: dict[str, Family]) -> None:
    unlisted = set()
    for name, family in exposed.items():
        row = DOCUMENTED.get(name)
        if row is None:
            continue
        for sample in family.samples:
            for label, value in sample.labels.items():
                allowed = row.values.get(label)
                if label != "le" and allowed is not None and value not in allowed:
                    unlisted.add((name, label, value))
    assert not unlisted


def _declarations() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every prometheus_client metric the services declare: name -> (type, label names)."""
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path in sorted((ROOT / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            kind = kinds.get(node.func.id)
            if kind is None or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            labels_node = node.args[2] if len(node.args) > 2 else None
            for keyword in node.keywords:
                if keyword.arg == "labelnames":
                    labels_node = keyword.value
            labels = ast.literal_eval(labels_node) if labels_node is not None else ()
            name = str(node.args[0].value)
            if kind == "counter" and not name.endswith("_total"):
                name += "_total"
            found[name] = (kind, tuple(labels))
    return found


def test_documented_labels_match_the_declarations() -> None:
    declared = _declarations()
    assert set(declared) == set(DOCUMENTED)
    mismatched = {
        name: ((row.type, sorted(row.labels)), (declared[name][0], sorted(declared[name][1])))
        for name, row in DOCUMENTED.items()
        if (row.type, set(row.labels)) != (declared[name][0], set(declared[name][1]))
    }
    assert not mismatched


# -- expressions -----------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


RULES = _rules()
ALERT_RULES = [rule for rule in RULES if "alert" in rule]
RECORDED = frozenset(rule["record"] for rule in RULES if "record" in rule)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


DASHBOARD_JSON = json.loads(DASHBOARD.read_text(encoding="utf-8"))
PANELS = list(_panels(DASHBOARD_JSON["panels"]))


def _grafana_expression(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard target."""
    found = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in RULES]
    for panel in PANELS:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", _grafana_expression(target["expr"])))
    return found


EXPRESSIONS = _expressions()


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_expression_parses(where: str, expr: str) -> None:
    promql_parser.parse(expr)


def test_the_grafana_variable_stand_ins_are_needed_and_a_bad_expression_fails() -> None:
    assert any("$__rate_interval" in t["expr"] for p in PANELS for t in p.get("targets", []))
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(chatagent_turns_total[5m])")


@dataclass(frozen=True)
class Selected:
    where: str
    series: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def _selectors(where: str, expr: str) -> list[Selected]:
    found: list[Selected] = []

    def visit(node: object) -> None:
        if not isinstance(node, promql_parser.VectorSelector):
            return
        matchers = node.matchers
        assert not matchers.or_matchers, f"{where}: `or` matchers are not checked here"
        pairs = tuple((m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in matchers.matchers)
        name = node.name or next((v for label, op, v in pairs if label == "__name__"), None)
        assert name is not None, f"{where}: a selector without a metric name"
        found.append(Selected(where, name, tuple(p for p in pairs if p[0] != "__name__")))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


SELECTED = [s for where, expr in EXPRESSIONS for s in _selectors(where, expr)]


def _family_of(series: str, exposed: dict[str, Family]) -> Family | None:
    return next((f for f in exposed.values() if series in f.series_names()), None)


def test_every_metric_the_rules_and_panels_use_is_exposed(exposed: dict[str, Family]) -> None:
    used = {s.series for s in SELECTED} - RECORDED - {"up"}
    assert {s.series for s in SELECTED} & RECORDED, "the panels use the recording rules"
    missing = sorted(name for name in used if _family_of(name, exposed) is None)
    assert not missing


def test_every_recorded_name_used_is_recorded() -> None:
    used = {s.series for s in SELECTED if ":" in s.series}
    assert used <= RECORDED


def _matches_documented(op: str, value: str, allowed: frozenset[str]) -> bool:
    if op in ("Equal", "NotEqual"):
        return value in allowed
    if ALTERNATION.fullmatch(value):
        return set(value.split("|")) <= allowed
    return any(re.fullmatch(value, candidate) for candidate in allowed)


def test_every_label_selected_exists_with_the_values_selected(exposed: dict[str, Family]) -> None:
    wrong = []
    for selected in SELECTED:
        family = _family_of(selected.series, exposed)
        if family is None:
            continue  # `up` and recorded series
        row = DOCUMENTED[family.name]
        for label, op, value in selected.matchers:
            if label in TARGET_LABELS:
                continue
            if label == "le":
                scraped = {s.labels["le"] for s in family.samples if "le" in s.labels}
                if not selected.series.endswith("_bucket") or value not in scraped:
                    wrong.append((selected.where, selected.series, label, value))
                continue
            if label not in row.labels:
                wrong.append((selected.where, selected.series, label, "no such label"))
                continue
            allowed = row.values[label]
            if allowed is not None and not _matches_documented(op, value, allowed):
                wrong.append((selected.where, selected.series, label, value))
    assert not wrong


# -- alerts and the runbook ------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


RUNBOOK_TEXT = RUNBOOK.read_text(encoding="utf-8")
ANCHORS = {_slug(m.group(2)) for m in re.finditer(r"^(#{1,6}) (.+)$", RUNBOOK_TEXT, re.M)}


def _runbook_alert_sections() -> set[str]:
    section = RUNBOOK_TEXT.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^### (\S+)$", section, re.M))


def test_every_alert_is_annotated_with_a_runbook_section() -> None:
    problems = []
    for rule in ALERT_RULES:
        name = rule["alert"]
        if rule.get("labels", {}).get("severity") not in {"warning", "critical"}:
            problems.append((name, "severity"))
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key, "")).strip():
                problems.append((name, key))
        page, _, anchor = str(annotations.get("runbook_url", "")).partition("#")
        if page != "docs/runbook.md" or anchor not in ANCHORS:
            problems.append((name, annotations.get("runbook_url")))
        if anchor != _slug(name):
            problems.append((name, "its runbook section is named after it"))
    assert not problems


def test_the_runbook_has_a_section_for_each_alert_and_no_other() -> None:
    assert _runbook_alert_sections() == {rule["alert"] for rule in ALERT_RULES}


def test_the_runbook_covers_the_routine_tasks() -> None:
    assert {"rotating-api-tokens", "erasing-a-users-data", "reading-a-turns-trace"} <= ANCHORS


def test_the_alerts_the_operators_asked_for_exist() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in ALERT_RULES}
    assert (
        'chatagent_dependency_up{dependency="redis"} == 0'
        in expressions["ChatagentRedisUnreachable"]
    )
    assert "chatagent_breaker_state" in expressions["ChatagentBreakerOpen"]
    thresholds = sorted(
        float(m.group(1))
        for rule in ALERT_RULES
        if rule["alert"] == "ChatagentGlobalBudgetNearlySpent"
        for m in [re.search(r"chatagent_budget_used_ratio\) > ([\d.]+)", rule["expr"])]
        if m
    )
    assert thresholds == [0.8, 0.95]


def test_annotations_name_only_labels_the_alert_keeps() -> None:
    # After `sum by (a, b)` only a and b are left for `{{ $labels.x }}`.
    wrong = []
    for rule in ALERT_RULES:
        kept = {
            label.strip()
            for group in re.findall(r"by \(([^)]*)\)", rule["expr"])
            for label in group.split(",")
        }
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if kept and label not in kept:
                    wrong.append((rule["alert"], label))
    assert not wrong


def _check_rule(rule: Any) -> list[str]:
    if not isinstance(rule, dict):
        return ["a rule is a mapping"]
    problems = []
    if ("record" in rule) == ("alert" in rule):
        return [f"exactly one of record and alert: {sorted(rule)}"]
    allowed = (
        {"record", "expr", "labels"}
        if "record" in rule
        else {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    )
    problems += [f"{key} is not a rule field" for key in set(rule) - allowed]
    if "record" in rule and not (
        METRIC_NAME.fullmatch(str(rule["record"])) and ":" in rule["record"]
    ):
        problems.append(f"recorded name {rule['record']!r} (level:metric:operations)")
    if "alert" in rule and not LABEL_NAME.fullmatch(str(rule["alert"])):
        problems.append(f"alert name {rule['alert']!r}")
    if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
        problems.append("expr is a non-empty string")
    for key in ("for", "keep_firing_for"):
        if key in rule and not (
            isinstance(rule[key], str) and rule[key] and PROMETHEUS_DURATION.fullmatch(rule[key])
        ):
            problems.append(f"{key}: {rule[key]!r} is not a duration")
    for key in ("labels", "annotations"):
        mapping = rule.get(key, {})
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and LABEL_NAME.fullmatch(k) and isinstance(v, str)
            for k, v in mapping.items()
        ):
            problems.append(f"{key} maps label names to strings")
    return problems


def _check_rule_file(document: Any) -> list[str]:
    if not isinstance(document, dict) or set(document) != {"groups"}:
        return ["the file is a mapping with groups only"]
    groups = document["groups"]
    if not isinstance(groups, list) or not groups:
        return ["groups is a non-empty list"]
    problems = []
    names = [group.get("name") for group in groups if isinstance(group, dict)]
    if len(names) != len(groups) or len(set(names)) != len(names) or not all(names):
        problems.append("every group has a unique name")
    for group in groups:
        if not isinstance(group, dict):
            continue
        extra = set(group) - {"name", "interval", "limit", "query_offset", "labels", "rules"}
        problems += [f"{group.get('name')}: {key} is not a group field" for key in extra]
        if "interval" in group and not PROMETHEUS_DURATION.fullmatch(str(group["interval"])):
            problems.append(f"{group.get('name')}: interval")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{group.get('name')}: rules is a non-empty list")
            continue
        problems += [f"{group.get('name')}: {p}" for rule in rules for p in _check_rule(rule)]
    return problems


def test_the_rule_file_has_prometheus_structure() -> None:
    assert _check_rule_file(yaml.safe_load(ALERTS.read_text(encoding="utf-8"))) == []


def test_the_structure_check_catches_what_prometheus_refuses() -> None:
    good = {"alert": "A", "expr": "up == 0", "for": "5m", "labels": {"severity": "warning"}}
    assert _check_rule_file({"groups": [{"name": "g", "rules": [good]}]}) == []
    for bad in (
        {**good, "for": "5 minutes"},
        {**good, "record": "a:b"},
        {"record": "no_colon", "expr": "up"},
        {**good, "severity": "warning"},
        {"alert": "A", "expr": ""},
    ):
        assert _check_rule_file({"groups": [{"name": "g", "rules": [bad]}]}), bad
    assert _check_rule_file({"groups": [{"name": "g", "rules": [good]}], "extra": 1})


# -- the dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_is_well_formed() -> None:
    variables = {v["name"]: v for v in DASHBOARD_JSON["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in PANELS if panel["type"] != "row"]
    assert len(titles) == len(set(titles))
    for panel in PANELS:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_dashboard_shows_what_the_operators_asked_for() -> None:
    used = " ".join(t["expr"] for p in PANELS for t in p.get("targets", []))
    for needed in (
        "chatagent:turns_per_hour:rate5m",
        "chatagent:turns_per_hour_by_outcome:rate5m",
        "chatagent:chat_server_errors:ratio_rate5m",
        "histogram_quantile(0.5, sum by (le, grpc_service, grpc_method)",
        "histogram_quantile(0.99, sum by (le, grpc_service, grpc_method)",
        "chatagent_tool_calls_total",
        "chatagent_breaker_state",
        "chatagent_turn_cost_usd_bucket",
        "chatagent_messages_total",
        "chatagent_message_features_total",
        "chatagent_conversation_turn_bucket",
        "chatagent_tool_answer_followups_total",
        "chatagent_llm_tokens_total",
        "chatagent_budget_used_ratio",
        "chatagent:tts_real_time_factor:rate5m",
        "chatagent_emotion_analyses_total",
        'chatagent_dependency_up{dependency="redis"}',
    ):
        assert needed in used, needed


# -- the kustomize component -----------------------------------------------------------------------


def test_the_component_renders_with_the_files_unchanged(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render the kustomize component"
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text(encoding="utf-8"))
    assert component["kind"] == "Component"
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    # An overlay like the prod one: the component included by a relative path, a namespace set.
    shutil.copytree(MONITORING, tmp_path / "components" / "monitoring")
    overlay = tmp_path / "overlays" / "prod"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: chatagent\n"
        "components:\n"
        "  - ../../components/monitoring\n",
        encoding="utf-8",
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    maps = {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {d["kind"] for d in maps.values()} == {"ConfigMap"}
    rules = maps["chatagent-prometheus-rules"]
    dashboard = maps["chatagent-grafana-dashboard"]
    assert rules["data"] == {"alerts.yaml": ALERTS.read_text(encoding="utf-8")}
    assert dashboard["data"] == {"dashboard.json": DASHBOARD.read_text(encoding="utf-8")}
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "grafana_dashboard" not in rules["metadata"].get("labels", {})
    for made in maps.values():
        assert made["metadata"]["namespace"] == "chatagent"
        # kubectl apply keeps the whole object in an annotation limited to 256 KiB.
        assert len(json.dumps(made)) < 200_000, made["metadata"]["name"]
