"""The ``/v1`` routers, one module per resource, and what they share: dependencies and paging.

Lists page by keyset: ``limit`` rows ordered by the resource's key, and an opaque ``next_cursor`` that
encodes the last key returned. Unlike an offset, a cursor neither skips nor repeats rows when rows are
inserted between two page requests.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy import ColumnElement, Engine, Row, Select, tuple_

from cloud_ingest.settings import CloudSettings

T = TypeVar("T")

MAX_LIMIT = 1000


def get_engine(request: Request) -> Engine:
    """The app's database engine."""
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> CloudSettings:
    """The app's settings."""
    settings: CloudSettings = request.app.state.settings
    return settings


def get_now_ms(request: Request) -> int:
    """Wall-clock time of the request, from the app's clock (tests replace it)."""
    clock: Callable[[], int] = request.app.state.now_ms
    return clock()


Db = Annotated[Engine, Depends(get_engine)]
Settings = Annotated[CloudSettings, Depends(get_settings)]
NowMs = Annotated[int, Depends(get_now_ms)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="`next_cursor` of the previous page; omit for the first.")
]


def encode_cursor(key: Sequence[Any]) -> str:
    """An opaque cursor for the position after ``key``."""
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str, columns: Sequence[ColumnElement[Any]]) -> list[Any]:
    """The key a cursor encodes, checked against the key columns' types; 422 when it is not ours."""
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise _bad_cursor() from exc
    if not isinstance(key, list) or len(key) != len(columns):
        raise _bad_cursor()
    for value, column in zip(key, columns, strict=True):
        # bool is an int subclass; no key column is boolean, so refuse it outright.
        if isinstance(value, bool) or not isinstance(value, column.type.python_type):
            raise _bad_cursor()
    return key


def _bad_cursor() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail="cursor is not one this API returned"
    )


def keyset(
    stmt: Select[Any],
    columns: Sequence[ColumnElement[Any]],
    *,
    cursor: str | None,
    limit: int,
    descending: bool = False,
) -> Select[Any]:
    """``stmt`` restricted to rows after ``cursor`` in key order, one row more than ``limit``.

    The extra row only tells whether another page exists; :func:`page_rows` drops it.
    """
    if cursor is not None:
        after = decode_cursor(cursor, columns)
        key = columns[0] if len(columns) == 1 else tuple_(*columns)
        bound = after[0] if len(columns) == 1 else tuple_(*after)
        stmt = stmt.where(key < bound if descending else key > bound)
    order = [c.desc() for c in columns] if descending else list(columns)
    return stmt.order_by(*order).limit(limit + 1)


def page_rows(
    rows: Sequence[Row[Any]], limit: int, key: Callable[[Row[Any]], Sequence[Any]]
) -> tuple[list[Row[Any]], str | None]:
    """The page's rows and the cursor of the next page (None when this is the last)."""
    if len(rows) <= limit:
        return list(rows), None
    kept = list(rows[:limit])
    return kept, encode_cursor(key(kept[-1]))


def split_list(text: str) -> list[str]:
    """A comma-joined column (``lot_ids``, ``flags``, ``topics``) as a list."""
    return [part for part in text.split(",") if part]
