"""The sink's line-protocol parser: escapes, field types and what InfluxDB refuses."""

from __future__ import annotations

import pytest

from coldtrace.demo.lineproto import LineError, Point, parse_line, parse_lines


def test_escapes_types_and_timestamps() -> None:
    point = parse_line(
        r'gap\ marker,lots=L1\,L2,site=wh\ a count=3i,ok=t,note="say \"hi\" \\ there",t=-2.5e1 1795000000000'
    )
    assert point == Point(
        measurement="gap marker",
        tags=(("lots", "L1,L2"), ("site", "wh a")),
        fields=(("count", 3), ("ok", True), ("note", 'say "hi" \\ there'), ("t", -25.0)),
        time=1795000000000,
    )
    assert parse_line("m f=1u").fields == (("f", 1),)
    assert parse_line("m f=1").fields == (("f", 1.0),)
    assert parse_line("m f=1").time is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        " f=1",
        "m",
        "m,tag f=1",
        "m,tag= f=1",
        "m f=",
        "m f=1,f=2",
        'm f="open',
        "m f=inf",
        "m f=1x",
        "m f=-1u",
        "m f=1 12:00",
    ],
)
def test_invalid_lines_are_refused(line: str) -> None:
    with pytest.raises(LineError):
        parse_line(line)


def test_a_bad_line_is_named_by_number() -> None:
    with pytest.raises(LineError, match="line 3"):
        parse_lines("m f=1 1\n\nm f=\n")
    assert len(parse_lines("# comment\nm f=1 1\n\nm f=2 2\n")) == 2
