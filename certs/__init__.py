"""coldtrace PKI tooling: a two-level ECDSA CA issuing TLS identities for brokers, gateways, devices
and cloud services (library: :mod:`certs.pki`; CLI: :mod:`certs.cli`, mounted as ``coldtrace certs``).
"""
