"""MQTT topic layout, shared by devices, gateways, the cloud and the brokers' ACLs.

Every topic carries the publisher's identity as one level, so the broker ACL (``pattern … %u``) and the
receiving code can both check that the certificate identity matches the topic::

    ct/v1/dev/<device_id>/up            device -> gateway: vendor-format readings (QoS 1)
    ct/v1/dev/<device_id>/cmd/<kind>    gateway -> device: commands (firmware update, config)
    ct/v1/gw/<gateway_id>/batch         gateway -> cloud: signed batch frames (QoS 1)
    ct/v1/gw/<gateway_id>/status        gateway -> cloud: health, retained, also the MQTT will
    ct/v1/gw/<gateway_id>/cmd/<kind>    cloud -> gateway: manifests, config, model updates
    ct/v1/gw/<gateway_id>/alert         gateway-local: fallback alerts while the cloud is unreachable
"""

from __future__ import annotations

import enum
import re

from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.reading import ID_PATTERN

ROOT = "ct/v1"
_ID = ID_PATTERN.removeprefix("^").removesuffix("$")
_DEVICE_UP = re.compile(rf"^ct/v1/dev/({_ID})/up$")
_GATEWAY_BATCH = re.compile(rf"^ct/v1/gw/({_ID})/batch$")
_GATEWAY_COMMAND = re.compile(rf"^ct/v1/gw/({_ID})/cmd/([a-z-]+)$")
_VALID_ID = re.compile(ID_PATTERN)


class GatewayCommand(enum.StrEnum):
    """What the cloud sends a gateway on its command topic."""

    MANIFEST = "manifest"  #: device <-> shipment/lot bindings, versioned
    CONFIG = "config"
    MODEL = "model"  #: a signed anomaly-model update


class DeviceCommand(enum.StrEnum):
    """What a gateway sends a device on its command topic."""

    FIRMWARE = "firmware"  #: a signed firmware image
    CONFIG = "config"


def _checked(identifier: str, what: str) -> str:
    if not _VALID_ID.fullmatch(identifier):
        raise ContractError(
            RejectCode.BAD_TOPIC, FieldError(what, f"{identifier!r} does not match {ID_PATTERN}")
        )
    return identifier


def device_uplink(device_id: str) -> str:
    """Topic a device publishes its readings on."""
    return f"{ROOT}/dev/{_checked(device_id, 'device_id')}/up"


def device_command(device_id: str, kind: DeviceCommand) -> str:
    """Topic a gateway sends a device command on."""
    return f"{ROOT}/dev/{_checked(device_id, 'device_id')}/cmd/{kind.value}"


def gateway_batches(gateway_id: str) -> str:
    """Topic a gateway publishes signed batch frames on."""
    return f"{ROOT}/gw/{_checked(gateway_id, 'gateway_id')}/batch"


def gateway_status(gateway_id: str) -> str:
    """Topic of a gateway's retained health status (and its MQTT will)."""
    return f"{ROOT}/gw/{_checked(gateway_id, 'gateway_id')}/status"


def gateway_command(gateway_id: str, kind: GatewayCommand) -> str:
    """Topic the cloud sends a gateway command on."""
    return f"{ROOT}/gw/{_checked(gateway_id, 'gateway_id')}/cmd/{kind.value}"


def gateway_local_alert(gateway_id: str) -> str:
    """Gateway-local topic of fallback alerts raised while the cloud is unreachable."""
    return f"{ROOT}/gw/{_checked(gateway_id, 'gateway_id')}/alert"


ALL_DEVICE_UPLINKS = f"{ROOT}/dev/+/up"
ALL_GATEWAY_BATCHES = f"{ROOT}/gw/+/batch"


def shared_gateway_batches(group: str) -> str:
    """Shared subscription that splits all gateways' batches across the workers of ``group``."""
    return f"$share/{_checked(group, 'group')}/{ALL_GATEWAY_BATCHES}"


def parse_device_uplink(topic: str) -> str:
    """The device id in a device uplink topic; ContractError if the topic is not one."""
    match = _DEVICE_UP.fullmatch(topic)
    if match is None:
        raise ContractError(RejectCode.BAD_TOPIC, FieldError("topic", f"{topic!r} is not ct/v1/dev/<id>/up"))
    return match.group(1)


def parse_gateway_batch(topic: str) -> str:
    """The gateway id in a batch topic; ContractError if the topic is not one."""
    match = _GATEWAY_BATCH.fullmatch(topic)
    if match is None:
        raise ContractError(
            RejectCode.BAD_TOPIC, FieldError("topic", f"{topic!r} is not ct/v1/gw/<id>/batch")
        )
    return match.group(1)


def parse_gateway_command(topic: str) -> tuple[str, GatewayCommand]:
    """The gateway id and command kind of a gateway command topic."""
    match = _GATEWAY_COMMAND.fullmatch(topic)
    if match is None or match.group(2) not in GatewayCommand.__members__.values():
        raise ContractError(
            RejectCode.BAD_TOPIC, FieldError("topic", f"{topic!r} is not ct/v1/gw/<id>/cmd/<kind>")
        )
    return match.group(1), GatewayCommand(match.group(2))


def check_identity(topic_identity: str, tls_identity: str) -> None:
    """Refuse a message whose topic names someone other than the authenticated sender."""
    if topic_identity != tls_identity:
        raise ContractError(
            RejectCode.IDENTITY_MISMATCH,
            FieldError("topic", f"topic names {topic_identity!r} but the sender is {tls_identity!r}"),
        )
