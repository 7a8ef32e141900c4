"""The cloud's decoder of batch bodies: the contract's strict decode, at about half the cost.

:func:`coldtrace.contract.batch.decode_body` builds a pydantic model per reading and runs its
validator for each; in a worker draining a backlog that was over half of the CPU spent checking
frames. Here msgspec parses the body into plain dicts with the same types, ranges, lengths and enums,
derived from the contract's models at import (a change to the contract cannot be missed here);
identifier patterns are matched once per distinct value in the batch; the readings' cross-field
rules are the contract's own function (:func:`coldtrace.contract.reading.inconsistency`); the body
must re-encode to itself through the contract's encoder; and the models are then filled in from the
checked values without validating them a second time.

The fast path only ever accepts. Whatever it does not accept outright (any error; a batch with gap
markers, or a gateway's first batch, whose extra rules it leaves to the contract; a body that is not
canonical) goes to ``decode_body``, which accepts it or says exactly why not. A property test holds
the two to the same result on arbitrary and on damaged bodies.
"""

from __future__ import annotations

import enum
import logging
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypedDict, TypeVar, Union, get_args, get_origin

import annotated_types
import msgspec
import orjson
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo

from coldtrace.contract.batch import Batch, decode_body, probe_batch
from coldtrace.contract.canonical import canonical_bytes
from coldtrace.contract.limits import DEFAULT_LIMITS, Limits
from coldtrace.contract.reading import Reading, inconsistency

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: pydantic's numeric and length constraints, as msgspec.Meta keywords.
_BOUNDS: dict[type[Any], str] = {
    annotated_types.Ge: "ge",
    annotated_types.Gt: "gt",
    annotated_types.Le: "le",
    annotated_types.Lt: "lt",
    annotated_types.MaxLen: "max_length",
    annotated_types.MinLen: "min_length",
}

#: TypedDict's functional form, for a TypedDict built at run time (mypy only knows literal ones).
_typed_dict: Any = TypedDict

_Pattern = tuple[str, Callable[[str], object], bool]
"""A field whose strings must match a pattern: (field, the pattern's fullmatch, tuple of strings?)."""


class _Fields:
    """A contract model's fields as a msgspec type (a TypedDict), and the patterns left to match."""

    def __init__(self, model: type[BaseModel], overrides: dict[str, Any]) -> None:
        self.patterns: list[_Pattern] = []
        fields = {
            name: overrides[name] if name in overrides else self._type(name, info.annotation, info.metadata)
            for name, info in model.model_fields.items()
        }
        # Every field is required (the canonical form writes each one, null when absent); names that
        # are not fields are skipped by msgspec, and then the body does not re-encode to itself.
        self.typed: Any = _typed_dict(f"{model.__name__}Fields", fields)

    def _type(self, name: str, tp: Any, metadata: list[Any], *, in_tuple: bool = False) -> Any:
        meta: dict[str, Any] = {}
        for item in metadata:
            self._constraint(name, item, meta, in_tuple=in_tuple)
        origin = get_origin(tp)
        if origin is Annotated:
            base, *inner = get_args(tp)
            out = self._type(name, base, inner, in_tuple=in_tuple)
        elif origin in (Union, types.UnionType):
            out = Union[tuple(self._type(name, arg, [], in_tuple=in_tuple) for arg in get_args(tp))]  # noqa: UP007
        elif origin is tuple and get_args(tp)[1:] == (Ellipsis,):
            out = tuple[self._type(name, get_args(tp)[0], [], in_tuple=True), ...]  # type: ignore[misc]
        elif (
            origin is Literal or tp in (bool, int, float, str, type(None))
            or (isinstance(tp, type) and issubclass(tp, enum.StrEnum))
        ):  # fmt: skip
            out = tp
        else:
            raise TypeError(f"{name}: no fast decoding for {tp!r}")
        return Annotated[out, msgspec.Meta(**meta)] if meta else out

    def _constraint(self, name: str, item: Any, meta: dict[str, Any], *, in_tuple: bool) -> None:
        if isinstance(item, FieldInfo):
            for inner in item.metadata:
                self._constraint(name, inner, meta, in_tuple=in_tuple)
        elif type(item) in _BOUNDS:
            meta[_BOUNDS[type(item)]] = getattr(item, _BOUNDS[type(item)])
        elif isinstance(item, StringConstraints) and isinstance(item.pattern, str):
            if any(v is not None for k, v in vars(item).items() if k != "pattern"):
                raise TypeError(f"{name}: no fast decoding for {item!r}")
            # Matching per value would cost more than the rest of the parse: see check_patterns.
            # fullmatch, because re's "$" also matches before a final newline.
            self.patterns.append((name, re.compile(item.pattern).fullmatch, in_tuple))
        else:
            raise TypeError(f"{name}: no fast decoding for the constraint {item!r}")

    def check_patterns(self, rows: list[dict[str, Any]], shared: dict[str, str] | None = None) -> bool:
        """Whether every string in ``rows`` matches its field's pattern (each distinct value once).

        With ``shared``, equal strings become one object on the way, the one ``shared`` holds: the
        contract's decoder (pydantic-core) hands out one object for equal strings, and without that
        storing a batch cost a third more (every dict and set of device ids hashing and comparing
        fresh strings).
        """
        share = None if shared is None else shared.setdefault
        for name, fullmatch, in_tuple in self.patterns:
            seen: set[str] = set()
            for r in rows:
                value = r[name]
                if value is None:
                    continue
                if share is not None:
                    r[name] = value = tuple([share(v, v) for v in value]) if in_tuple else share(value, value)
                if in_tuple:
                    seen.update(value)
                else:
                    seen.add(value)
            if not all(fullmatch(v) for v in seen):
                return False
        return True


_READING = _Fields(Reading, {})
# Gap markers and the first batch carry rules of their own: such batches take the contract's path,
# so markers need only be recognised as present.
_BATCH = _Fields(Batch, {"readings": types.GenericAlias(list, (_READING.typed,)), "markers": list[Any]})
_DECODER = msgspec.json.Decoder(_BATCH.typed)
_FIELDS_SET = {Reading: set(Reading.model_fields), Batch: set(Batch.model_fields)}
_setattr = object.__setattr__
#: The readings' identifiers seen lately, each one object (see check_patterns). Bounded rather than
#: sys.intern: interned strings are immortal on Python 3.12, and identifiers come from the fleet.
_SHARED: dict[str, str] = {}
_SHARED_MAX = 1 << 16


def _filled(model: type[M], values: dict[str, Any]) -> M:
    """A model holding ``values``, already checked, as validation would have left it.

    What ``BaseModel.model_construct`` does for a model without defaults to fill, aliases or private
    attributes, at a tenth of its cost. :func:`_self_check` makes sure it still matches pydantic.
    """
    instance = model.__new__(model)
    _setattr(instance, "__dict__", values)
    _setattr(instance, "__pydantic_fields_set__", _FIELDS_SET[model])
    _setattr(instance, "__pydantic_extra__", None)
    _setattr(instance, "__pydantic_private__", None)
    return instance


def fast_decode(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Batch | None:
    """The batch ``decode_body`` returns for ``body``, or None when this path leaves it to that."""
    if len(_SHARED) > _SHARED_MAX:  # before anything can fail: refused bodies add to it too
        _SHARED.clear()
    try:
        doc = _DECODER.decode(body)
    except (msgspec.MsgspecError, ValueError):  # ValueError: a body that is not UTF-8
        return None
    rows: list[dict[str, Any]] = doc["readings"]
    if (
        doc["markers"] or doc["batch_seq"] == 1 or not rows or len(rows) > limits.max_readings_per_batch
        or any(inconsistency(r) is not None for r in rows)
        or not (_READING.check_patterns(rows, _SHARED) and _BATCH.check_patterns([doc]))
        or orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) != body
    ):  # fmt: skip
        return None
    doc["readings"] = tuple([_filled(Reading, r) for r in rows])
    doc["markers"] = ()
    return _filled(Batch, doc)


def decode_batch(body: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Strictly decode a batch body, exactly as :func:`decode_body` does (it raises what that raises)."""
    batch = fast_decode(body, limits) if _enabled else None
    return decode_body(body, limits=limits) if batch is None else batch


def _self_check() -> bool:
    """Whether the fast path returns what the contract's decoder does, on a batch setting every field."""
    probe = probe_batch()
    body = canonical_bytes(probe.model_copy(update={"batch_seq": 2, "markers": (), "prev_hash": "a" * 64}))
    fast, reference = fast_decode(body), decode_body(body)
    return (
        fast is not None
        and fast == reference
        and fast.model_fields_set == reference.model_fields_set
        and [r.model_fields_set for r in fast.readings] == [r.model_fields_set for r in reference.readings]
        and canonical_bytes(fast) == body
        and fast.model_dump() == reference.model_dump()
    )


_enabled = _self_check()
if not _enabled:
    logger.warning("the fast batch decoder disagrees with the contract's on a probe; using the contract's")
