"""The dashboards as files: generated from the code, well-formed, and naming only things that exist -
provisioned datasources, defined variables, the metrics the agents and workers export, the
measurements, tags and fields the cloud writes, and the settings they depend on."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import RuleSettings
from cloud_ingest.telemetry import lineproto
from coldtrace.grafana import DASHBOARDS, render_all, stale, write_all
from coldtrace.grafana.__main__ import main
from coldtrace.grafana.common import MKT_ACTIVATION_K
from edge_agent.metrics import AgentMetrics
from tests.grafana.conftest import DASHBOARD_DIR, GRAFANA, load_dashboards
from tests.grafana.expand import ExpansionError, TimeRange, expand

Json = dict[str, Any]
DASHBOARD_FILES = load_dashboards()
MIXED = "-- Mixed --"
#: Labels the scrape configuration puts on every series (grafana/README.md), plus histograms' ``le``.
TARGET_LABELS = {"job", "instance", "gateway", "site", "le"}


def _provisioned() -> dict[str, str]:
    text = (GRAFANA / "provisioning/datasources/coldtrace.yaml").read_text(encoding="utf-8")
    sources = yaml.safe_load(text)["datasources"]
    uids = [s["uid"] for s in sources]
    assert len(uids) == len(set(uids)), f"datasource uids repeat: {uids}"
    return {s["uid"]: s["type"] for s in sources}


def _panels(dashboard: Json) -> list[Json]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _queries(dashboard: Json) -> list[tuple[str, str, str]]:
    """(where, datasource type, query text) of every panel target, annotation and variable."""
    found = []
    for panel in _panels(dashboard):
        for t in panel["targets"]:
            text = t.get("expr") or t.get("query") or t.get("rawSql")
            found.append((f"panel {panel['title']!r} {t['refId']}", t["datasource"]["type"], text))
    found += [
        (f"annotation {a['name']!r}", a["datasource"]["type"], a["target"]["rawSql"])
        for a in dashboard["annotations"]["list"]
        if "target" in a
    ]
    found += [
        (f"variable {v['name']}", v["datasource"]["type"], v["query"])
        for v in dashboard["templating"]["list"]
    ]
    return found


def test_the_committed_dashboards_are_what_the_code_renders() -> None:
    assert sorted(DASHBOARD_FILES) == sorted(d.uid for d in DASHBOARDS)
    assert stale(DASHBOARD_DIR) == [], "run: python -m coldtrace.grafana"


def test_check_mode_fails_on_a_stale_missing_or_unknown_file(tmp_path: Path) -> None:
    write_all(tmp_path)
    assert main(["--out", str(tmp_path), "--check"]) == 0
    first = tmp_path / DASHBOARDS[0].filename
    first.write_text(first.read_text(encoding="utf-8").replace('"title"', '"Title"', 1), encoding="utf-8")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    (tmp_path / "leftover.json").write_text("{}", encoding="utf-8")
    assert stale(tmp_path) == ["leftover.json"]
    (tmp_path / "leftover.json").unlink()
    (tmp_path / DASHBOARDS[-1].filename).unlink()
    assert stale(tmp_path) == [DASHBOARDS[-1].filename]
    assert set(render_all()) == {d.filename for d in DASHBOARDS}


@pytest.mark.parametrize("uid", sorted(DASHBOARD_FILES))
def test_panel_ids_are_unique_and_panels_do_not_overlap(uid: str) -> None:
    panels = DASHBOARD_FILES[uid]["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"repeated panel ids in {uid}: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] < g["x"] + g["w"] <= 24, f"{p['title']} leaves the grid: {g}"
        for cell in itertools.product(range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, f"{p['title']!r} overlaps {cells[cell]!r} at {cell}"
            cells[cell] = p["title"]


@pytest.mark.parametrize("uid", sorted(DASHBOARD_FILES))
def test_every_datasource_is_provisioned_with_its_type(uid: str) -> None:
    provisioned = _provisioned()
    dashboard = DASHBOARD_FILES[uid]

    def check(ref: Json, where: str) -> None:
        assert ref["uid"] in provisioned, f"{where}: datasource {ref['uid']!r} is not provisioned"
        assert ref["type"] == provisioned[ref["uid"]], f"{where}: {ref} is a {provisioned[ref['uid']]}"

    for panel in _panels(dashboard):
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        for t in targets:
            check(t["datasource"], f"panel {panel['title']!r} target {t['refId']}")
        if panel["datasource"]["uid"] == MIXED:
            assert len({t["datasource"]["uid"] for t in targets}) > 1, (
                f"{panel['title']!r}: Mixed for one source"
            )
        else:
            check(panel["datasource"], f"panel {panel['title']!r}")
            assert {t["datasource"]["uid"] for t in targets} == {panel["datasource"]["uid"]}
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            check(annotation["datasource"], f"annotation {annotation['name']!r}")
    for variable in dashboard["templating"]["list"]:
        check(variable["datasource"], f"variable {variable['name']}")


@pytest.mark.parametrize("uid", sorted(DASHBOARD_FILES))
def test_every_variable_a_query_uses_is_defined_before_it_is_used(uid: str) -> None:
    dashboard = DASHBOARD_FILES[uid]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert len(names) == len(set(names))
    everything = {name: ["x"] for name in names}
    window = TimeRange(0, 3_600_000)
    for where, kind, text in _queries(dashboard):
        earlier = everything
        if where.startswith("variable "):
            # A variable's query may only use the variables above it (Grafana resolves them in order).
            earlier = {n: ["x"] for n in names[: names.index(where.removeprefix("variable "))]}
        try:
            expanded = expand(
                text, datasource_type=kind, time_range=window, variables=earlier, interval=10_000
            )
        except ExpansionError as exc:
            pytest.fail(f"{uid} {where}: {exc}")
        assert "$" not in re.sub(r"\$[/)]", "", expanded), f"{uid} {where} left unexpanded: {expanded}"


def test_expansion_refuses_an_undefined_variable_or_an_unknown_macro() -> None:
    window = TimeRange(0, 60_000)
    common: dict[str, Any] = {"time_range": window, "interval": 1000}
    with pytest.raises(ExpansionError, match=r"\$shipment"):
        expand('up{x=~"$shipment"}', datasource_type="prometheus", variables={}, **common)
    with pytest.raises(ExpansionError, match="timeGroup"):
        expand(
            "SELECT $__timeGroup(t, 1m)",
            datasource_type="grafana-postgresql-datasource",
            variables={},
            **common,
        )
    with pytest.raises(ExpansionError, match="timeFilter"):
        expand("SELECT 1 WHERE $timeFilter", datasource_type="prometheus", variables={}, **common)
    sql = expand(
        "x IN ($g) AND $__unixEpochFrom() < 5",
        datasource_type="grafana-postgresql-datasource",
        variables={"g": ["a'b", "c"]},
        **common,
    )
    assert sql == "x IN ('a''b','c') AND 0 < 5"
    influx = expand(
        '"g" =~ /^$g$/ AND $timeFilter', datasource_type="influxdb", variables={"g": ["a.b", "c"]}, **common
    )
    assert influx == '"g" =~ /^(a\\.b|c)$/ AND time >= 0ms and time <= 60000ms'
    promql = expand(
        'x{g=~"$g"}[$__rate_interval]',
        datasource_type="prometheus",
        variables={"g": ["a.b"]},
        scrape_interval_ms=15_000,
        **common,
    )
    assert promql == 'x{g=~"a\\\\.b"}[1m]'


def _exported_metrics() -> tuple[set[str], set[str]]:
    """Series names the agents and workers expose, and every label name they use."""
    names, labels = {"up"}, set(TARGET_LABELS)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    for registry in (AgentMetrics().registry, CloudMetrics().registry):
        for family in registry.collect():  # labelled metrics without children included
            names |= {family.name + s for s in suffixes[family.type]}
        # Label names are known only to the collectors (a labelled metric has no sample yet).
        for collector in list(registry._collector_to_names):
            labels |= set(getattr(collector, "_labelnames", ()))
    return names, labels


def test_promql_names_only_metrics_and_labels_that_are_exported() -> None:
    names, labels = _exported_metrics()
    used = 0
    for uid, dashboard in DASHBOARD_FILES.items():
        for where, kind, text in _queries(dashboard):
            if kind != "prometheus":
                continue
            for metric in re.findall(r"\b(coldtrace_\w+|up)\s*\{", text):
                used += 1
                assert metric in names, f"{uid} {where}: {metric} is not exported"
            for group in re.findall(r"\bby \(([^)]*)\)", text):
                for label in (g.strip() for g in group.split(",")):
                    assert label in labels, f"{uid} {where}: no series has a {label!r} label"
            for label in re.findall(r"(\w+)=~", text):
                assert label in labels, f"{uid} {where}: no series has a {label!r} label"
    assert used > 20


def _line_protocol_schema() -> dict[str, set[str]]:
    """Measurement -> its tag and field keys, from the schema table in lineproto's docstring."""
    schema: dict[str, set[str]] = {}
    doc = lineproto.__doc__ or ""
    for measurement, keys in re.findall(r"^(\w+)\s+(?:tag|field)\s+(\w+(?:, \w+)*)\s{2,}", doc, re.MULTILINE):
        schema.setdefault(measurement, set()).update(k.strip() for k in keys.split(","))
    return schema


def test_influxql_names_only_measurements_tags_and_fields_the_cloud_writes() -> None:
    schema = _line_protocol_schema()
    assert {"reading", "gap", "ingest_batch"} <= set(schema)
    assert {"temperature_c", "shipment", "lots", "skew_ms"} <= schema["reading"]
    used = 0
    for uid, dashboard in DASHBOARD_FILES.items():
        for where, kind, text in _queries(dashboard):
            if kind != "influxdb":
                continue
            (measurement,) = re.findall(r'FROM "(\w+)"', text)
            assert measurement in schema, f"{uid} {where}: no measurement {measurement}"
            names = re.sub(r'\bAS "\w+"', "", text)  # column aliases name nothing stored
            for key in set(re.findall(r'"(\w+)"', names)) - {measurement}:
                used += 1
                assert key in schema[measurement], f"{uid} {where}: {measurement} has no tag or field {key}"
    assert used > 20


def test_the_mkt_panel_uses_the_rules_activation_energy() -> None:
    assert RuleSettings().mkt_activation_k == MKT_ACTIVATION_K


def test_provisioning_names_its_environment_and_mount_points_in_the_readme() -> None:
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    datasources = (GRAFANA / "provisioning/datasources/coldtrace.yaml").read_text(encoding="utf-8")
    settings = "\n".join(line for line in datasources.splitlines() if not line.lstrip().startswith("#"))
    variables = set(re.findall(r"\$\{(\w+)\}", settings))
    assert len(variables) >= 9
    for variable in sorted(variables):
        assert f"`{variable}`" in readme, f"grafana/README.md does not explain {variable}"
    parsed = yaml.safe_load(datasources)["datasources"]
    influx = next(s for s in parsed if s["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "InfluxQL"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/coldtrace.yaml").read_text(encoding="utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] in readme, (
        "the README must mount the dashboards where the provider reads"
    )
