"""The cloud's exception tree; the API maps each to one HTTP status."""

from __future__ import annotations


class CloudError(Exception):
    """Base of the cloud's own errors."""


class NotFound(CloudError):
    """The named object does not exist (404)."""


class Conflict(CloudError):
    """The request is valid but not in the object's current state (409)."""


class Forbidden(CloudError):
    """The caller's role may not do this (403)."""
