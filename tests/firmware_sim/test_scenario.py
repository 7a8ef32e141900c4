"""Scenario files: the built-ins load, and every bad file is refused naming the file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.errors import ScenarioError, UnknownScenario
from firmware_sim.scenario import (
    EventKind,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
    resolve_scenario,
)

REQUIRED = {
    "normal-day", "reefer-failure", "door-left-open", "glitch-storm", "network-partition", "gateway-reboot",
    "shipment-transfer", "mixed-fleet",
}  # fmt: skip

MINIMAL = """
name = "tiny"
description = "x"
duration_s = 60
[[fleet]]
share = 1.0
kind = "reefer"
"""


def test_every_named_scenario_ships_and_validates() -> None:
    scenarios = builtin_scenarios()
    assert set(scenarios) >= REQUIRED
    assert all(s.description for s in scenarios.values())
    assert {f.format.value for f in scenarios["mixed-fleet"].fleet} == {
        "vendor-a-json",
        "vendor-b-binary",
        "vendor-c-text",
    }
    partition = scenarios["network-partition"].events[0]
    assert partition.kind is EventKind.UPLINK_PARTITION
    assert partition.duration_s == 1800


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (MINIMAL.replace('kind = "reefer"', 'kind = "freezer"'), "fleet[0].kind", "Input should be"),
        (MINIMAL.replace("share = 1.0", "share = 0.5"), "", "add up to 1"),
        (MINIMAL + "colour = 'red'\n", "fleet[0].colour", "unknown key"),
        (MINIMAL.replace('description = "x"\n', ""), "description", "required key is missing"),
        (MINIMAL.replace("duration_s = 60", "duration_s = -5"), "duration_s", "greater than 0"),
        (MINIMAL + "[[events]]\nkind = 'door_open'\nat_s = 5\n", "events[0]", "needs duration_s"),
        (
            MINIMAL + "[[events]]\nkind = 'transfer'\nat_s = 5\ngateway = 0\nto_gateway = 3\n",
            "",
            "gateways = 1",
        ),
        (MINIMAL + "[faults]\nspike = 2\n", "faults.spike", "less than or equal to 1"),
        (
            MINIMAL.replace('kind = "reefer"', 'kind = "reefer"\nformat = "native"'),
            "fleet[0]",
            "vendor formats",
        ),
        ("name = [", "", "not valid TOML"),
    ],
)
def test_bad_scenario_names_file_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="my.toml")
    assert caught.value.path == "my.toml"
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).startswith("my.toml: ")


def test_load_from_path_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_scenario(path).name == "tiny"
    assert resolve_scenario(str(path)).name == "tiny"
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(path)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownScenario, match="normal-day"):
        resolve_scenario("tuesday")
