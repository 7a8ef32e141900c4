"""``POST /v1/ingest/batches``: a gateway's signed batch over HTTPS, for sites where MQTT cannot get out.

Same envelope, same verification as over MQTT: the body is the frame exactly as the gateway would
publish it, and :meth:`Ingestor.ingest` checks it with the sender's TLS identity in the topic's place
(TLS identity = envelope gateway id = topic). The sender is the client certificate the listener
verified (:mod:`cloud_ingest.api.tls`); it must be a gateway's: CN ``<id>`` and SAN URI
``urn:coldtrace:gateway:<id>``. The body is refused once it exceeds the frame limit, before more of it
is buffered.

The answer tells the gateway what to do with the frame: 2xx done, 503 send it again later; after any
4xx, resending the same bytes gets the same answer until an operator acts (enrols the gateway,
registers its key). A 4xx whose ``error`` is a reject code was dead-lettered like an MQTT reject
(``oversized`` is only counted: its body was not read)::

    200  accepted, duplicate         {"outcome", "gateway_id", "batch_seq", "readings_new", ...}
    401  unauthorized                no verified client certificate on the connection
    403  forbidden                   a certificate, but not a gateway's
    403  identity_mismatch, unknown_gateway, unknown_key, revoked
                                     the sender may not submit this frame (enrol or re-key first)
    409  replayed_sequence, chain_mismatch
                                     the frame conflicts with the gateway's stored chain
    413  oversized                   larger than the limit (Content-Length, or counted while reading)
    422  bad_frame, malformed_json, invalid_field, unsupported_schema, non_canonical, bad_signature
    503  unavailable                 the database is down; Retry-After says when to try again
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from certs.model import Role, identity_uri
from cloud_ingest.api.models import ErrorOut
from cloud_ingest.ingest import Ingestor, IngestResult, Outcome, StoreUnavailable
from cloud_ingest.verify import IngestReject

logger = logging.getLogger(__name__)

TRANSPORT = "http"

#: The status of each reason a frame is refused for.
REJECT_STATUS: dict[IngestReject, HTTPStatus] = {
    IngestReject.OVERSIZED: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    IngestReject.BAD_FRAME: HTTPStatus.UNPROCESSABLE_ENTITY,
    IngestReject.MALFORMED_JSON: HTTPStatus.UNPROCESSABLE_ENTITY,
    IngestReject.INVALID_FIELD: HTTPStatus.UNPROCESSABLE_ENTITY,
    IngestReject.UNSUPPORTED_SCHEMA: HTTPStatus.UNPROCESSABLE_ENTITY,
    IngestReject.NON_CANONICAL: HTTPStatus.UNPROCESSABLE_ENTITY,
    IngestReject.BAD_SIGNATURE: HTTPStatus.UNPROCESSABLE_ENTITY,
    IngestReject.BAD_TOPIC: HTTPStatus.UNPROCESSABLE_ENTITY,  # MQTT only; listed to be complete
    IngestReject.IDENTITY_MISMATCH: HTTPStatus.FORBIDDEN,
    IngestReject.UNKNOWN_GATEWAY: HTTPStatus.FORBIDDEN,
    IngestReject.UNKNOWN_KEY: HTTPStatus.FORBIDDEN,
    IngestReject.REVOKED: HTTPStatus.FORBIDDEN,
    IngestReject.REPLAYED_SEQUENCE: HTTPStatus.CONFLICT,
    IngestReject.CHAIN_MISMATCH: HTTPStatus.CONFLICT,
}


class BatchAck(BaseModel):
    """The answer for a stored (or already stored) batch."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    gateway_id: str
    batch_seq: int
    readings_new: int
    readings_duplicate: int


class TooLarge(Exception):
    """The request body exceeds the frame limit."""


def gateway_identity(request: Request) -> str:
    """The gateway id of the verified client certificate; 401 without one, 403 when not a gateway's."""
    tls = request.scope.get("extensions", {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain:
        raise HTTPException(
            HTTPStatus.UNAUTHORIZED, "a gateway's client certificate is required (mutual TLS)"
        )
    cert = x509.load_pem_x509_certificate(str(chain[0]).encode())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if len(names) == 1 else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not isinstance(name, str) or identity_uri(Role.GATEWAY, name) not in uris:
        logger.warning("refused a batch from %s: not a gateway certificate (URIs %s)", name, uris)
        raise HTTPException(
            HTTPStatus.FORBIDDEN, f"certificate {name!r} is not a gateway's: only gateways submit batches"
        )
    return name


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body; TooLarge as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body of {declared} bytes exceeds the frame limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body exceeds the frame limit of {limit} bytes")
    return bytes(body)


def _error(
    status: HTTPStatus, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=int(status), headers=headers)


def answer(result: IngestResult) -> JSONResponse:
    """The HTTP answer for an ingest result."""
    if result.outcome is Outcome.REJECTED:
        reason = result.reason or IngestReject.BAD_FRAME
        return _error(REJECT_STATUS.get(reason, HTTPStatus.UNPROCESSABLE_ENTITY), reason.value, result.detail)
    ack = BatchAck(
        outcome=result.outcome, gateway_id=result.gateway_id or "", batch_seq=result.batch_seq or 0,
        readings_new=result.readings_new, readings_duplicate=result.readings_duplicate,
    )  # fmt: skip
    return JSONResponse(ack.model_dump(mode="json"))


def ingest_router(ingestor: Ingestor, *, retry_after_s: int = 5) -> APIRouter:
    """``POST /ingest/batches`` over ``ingestor``; mount it on a listener that verifies client certs."""
    router = APIRouter(tags=["ingest"])
    limit = ingestor.limits.max_batch_bytes
    errors: dict[int | str, dict[str, object]] = {
        int(status): {"model": ErrorOut} for status in {*REJECT_STATUS.values(), HTTPStatus.UNAUTHORIZED}
    }

    @router.post(
        "/ingest/batches",
        name="ingest.batches",
        response_model=BatchAck,
        responses={**errors, int(HTTPStatus.SERVICE_UNAVAILABLE): {"model": ErrorOut}},
    )
    async def post_batch(request: Request) -> JSONResponse:
        """Verify and store one signed batch frame (``application/octet-stream``) from its gateway."""
        gateway_id = gateway_identity(request)
        try:
            frame = await read_capped(request, limit)
        except TooLarge as exc:
            ingestor.metrics.rejects.labels(IngestReject.OVERSIZED.value).inc()
            logger.warning("refused a batch from %s: %s", gateway_id, exc)
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, IngestReject.OVERSIZED.value, str(exc))
        except ClientDisconnect:
            logger.info("gateway %s disconnected while sending a batch", gateway_id)
            return _error(HTTPStatus.BAD_REQUEST, "bad_request", "the client disconnected")
        try:
            result = await run_in_threadpool(
                ingestor.ingest, frame, topic_gateway=gateway_id, identity=gateway_id, transport=TRANSPORT
            )
        except StoreUnavailable as exc:
            logger.warning(
                "batch from %s not stored, asked to retry in %d s: %s", gateway_id, retry_after_s, exc
            )
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "unavailable",
                "the store is unavailable; send the batch again",
                headers={"Retry-After": str(retry_after_s)},
            )
        return answer(result)

    return router
