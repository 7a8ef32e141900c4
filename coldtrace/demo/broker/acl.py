"""Topic filters and the demo broker's access rules (the same grants as the production Mosquitto ACL).

Identities are certificate CNs, as with Mosquitto's ``use_identity_as_username``. Every identity may
use the topics that carry its own name (the ``pattern … %u`` lines); service identities get extra
grants by name. A subscription is allowed only if every topic its filter can match is readable, so a
refused read shows up as a refused SUBACK rather than as silence.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SHARE_PREFIX = "$share/"


class Access(enum.Flag):
    """What a rule grants."""

    READ = enum.auto()
    WRITE = enum.auto()
    READWRITE = READ | WRITE


@dataclass(frozen=True, slots=True)
class Rule:
    """One grant: ``access`` on topics matching ``pattern`` (``%u`` is the identity)."""

    access: Access
    pattern: str


#: Every identity, on topics named after itself (devices, gateways).
OWN_TOPICS: tuple[Rule, ...] = (
    Rule(Access.WRITE, "ct/v1/dev/%u/up"),
    Rule(Access.READ, "ct/v1/dev/%u/cmd/#"),
    Rule(Access.WRITE, "ct/v1/gw/%u/batch"),
    Rule(Access.WRITE, "ct/v1/gw/%u/status"),
    Rule(Access.READ, "ct/v1/gw/%u/cmd/#"),
)


def cloud_services(ingest: str) -> dict[str, tuple[Rule, ...]]:
    """The cloud broker's service grants: the ingest identity reads batches and pushes commands."""
    return {
        ingest: (
            Rule(Access.READ, "ct/v1/gw/+/batch"),
            Rule(Access.READ, "ct/v1/gw/+/status"),
            Rule(Access.WRITE, "ct/v1/gw/+/cmd/#"),
        )
    }


def gateway_services(gateway_id: str, *, agent: str, loadgen: str) -> dict[str, tuple[Rule, ...]]:
    """A gateway broker's service grants: its agent reads every device; the load generator writes as any."""
    return {
        agent: (Rule(Access.READ, "ct/v1/dev/+/up"), Rule(Access.WRITE, f"ct/v1/gw/{gateway_id}/alert")),
        loadgen: (Rule(Access.WRITE, "ct/v1/dev/+/up"),),
    }


def valid_topic(topic: str) -> bool:
    """A topic name a client may publish to (4.7.3): not empty, no wildcards."""
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_filter(topic_filter: str) -> bool:
    """A well-formed topic filter (4.7.1): ``#`` only last and alone in its level, ``+`` alone."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscription's topic filter, split into the share group (if any) and the filter proper."""

    text: str
    """As subscribed, with any ``$share/<group>/`` prefix."""
    group: str | None
    levels: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Filter | None:
        """The filter, or None when it is malformed (a shared one needs a group and a filter)."""
        group = None
        proper = text
        if text.startswith(SHARE_PREFIX):
            group, sep, proper = text[len(SHARE_PREFIX) :].partition("/")
            if not sep or not group or "+" in group or "#" in group:
                return None
        if not valid_filter(proper):
            return None
        return cls(text, group, tuple(proper.split("/")))

    @property
    def proper(self) -> str:
        """The filter without its share prefix."""
        return "/".join(self.levels)

    def matches(self, topic_levels: Sequence[str]) -> bool:
        """True when a topic (split into levels) matches (4.7; wildcards skip ``$`` topics)."""
        if topic_levels and topic_levels[0].startswith("$") and self.levels[0] in {"+", "#"}:
            return False
        for i, level in enumerate(self.levels):
            if level == "#":
                return True
            if i >= len(topic_levels):
                return False
            if level != "+" and level != topic_levels[i]:
                return False
        return len(topic_levels) == len(self.levels)


def _covers(rule_levels: Sequence[str], filter_levels: Sequence[str]) -> bool:
    """True when every topic ``filter_levels`` matches also matches the rule."""
    for i, rule in enumerate(rule_levels):
        if rule == "#":
            return True
        if i >= len(filter_levels):
            return False
        level = filter_levels[i]
        if level == "#":
            return False
        if rule not in {"+", level}:
            return False
    return len(filter_levels) == len(rule_levels)


@dataclass(frozen=True, slots=True)
class Acl:
    """Who may publish and subscribe where."""

    patterns: tuple[Rule, ...] = OWN_TOPICS
    users: Mapping[str, Sequence[Rule]] = field(default_factory=dict)

    def _rules(self, identity: str, access: Access) -> list[tuple[str, ...]]:
        own = [
            tuple(r.pattern.replace("%u", identity).split("/")) for r in self.patterns if access & r.access
        ]
        named = [tuple(r.pattern.split("/")) for r in self.users.get(identity, ()) if access & r.access]
        return own + named

    def may_publish(self, identity: str, topic: str) -> bool:
        """True when ``identity`` may publish to ``topic``."""
        levels = topic.split("/")
        return any(_covers(rule, levels) for rule in self._rules(identity, Access.WRITE))

    def may_subscribe(self, identity: str, topic_filter: Filter) -> bool:
        """True when ``identity`` may read every topic ``topic_filter`` can match."""
        return any(_covers(rule, topic_filter.levels) for rule in self._rules(identity, Access.READ))
