"""An in-process MQTT 5 broker that admits only clients with a verified certificate (see ``server``)."""

from coldtrace.demo.broker.acl import Access, Acl, Rule, cloud_services, gateway_services
from coldtrace.demo.broker.server import BrokerStats, MqttBroker, certificate_identity, server_tls

__all__ = [
    "Access",
    "Acl",
    "BrokerStats",
    "MqttBroker",
    "Rule",
    "certificate_identity",
    "cloud_services",
    "gateway_services",
    "server_tls",
]
