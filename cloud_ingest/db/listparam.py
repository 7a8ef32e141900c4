"""A column matched against a list parameter, written the way each engine runs it best."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ARRAY, String, any_, bindparam
from sqlalchemy.sql.elements import ColumnElement

#: The engines the cloud runs on; statements that differ between them are built once for each.
DIALECTS = ("postgresql", "sqlite")


def one_of(dialect: str, column: Any, name: str) -> ColumnElement[bool]:
    """``column`` is one of the strings in the list parameter ``name``.

    PostgreSQL takes the list as one array parameter (``= ANY(:name)``): the statement's text is then
    the same for any number of values, so it is compiled and prepared once. An expanded IN list is new
    text for every list length, compiled and parsed again each time: 11 % of a busy worker's CPU with
    2,000 devices (py-spy). SQLite has no arrays, so it gets the expanded IN list.
    """
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(String)))  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]
