"""The cloud's HTTP API: :func:`create_app` and what callers plug into it."""

from cloud_ingest.api.app import create_app
from cloud_ingest.api.auth import PERMISSIONS, Principal, TokenVerifier, require, verify_bearer
from cloud_ingest.api.routes.manifests import ManifestPublisher, PublishFailed

__all__ = [
    "PERMISSIONS",
    "ManifestPublisher",
    "Principal",
    "PublishFailed",
    "TokenVerifier",
    "create_app",
    "require",
    "verify_bearer",
]
