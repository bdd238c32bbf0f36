"""CloudEvents as KServe's payload logger sends them, parsed into :class:`InferenceEvent`.

KServe's logger (``pkg/logger`` in the KServe repository) posts one event per request and one per
response, in CloudEvents 1.0 *binary* mode: the payload is the HTTP body unchanged and the context
is in headers:

==========================  ==================================================================
``Ce-Specversion``          ``1.0``
``Ce-Id``                   the inference id: the incoming request's ``Ce-Id`` header, or a new
                            UUID; request and response events of one inference share it
``Ce-Type``                 ``org.kubeflow.serving.inference.request`` or ``...response``
``Ce-Source``               the logger's source URI (``http://localhost:9081/`` in a pod)
``Ce-Time``                 RFC 3339 timestamp
``Ce-Inferenceservicename`` the InferenceService
``Ce-Namespace``            its namespace
``Ce-Component``            ``predictor``, ``transformer`` or ``explainer``
``Ce-Endpoint``             ``default`` or ``canary`` (may be empty)
``Ce-Metadata``             JSON object of selected request headers (``metadataHeaders``)
``Ce-Annotations``          JSON object of logger annotations (optional)
``Content-Type``            the *request's* content type, for the response event too
==========================  ==================================================================

Structured mode (``application/cloudevents+json``, attributes and ``data``/``data_base64`` in one
JSON object) and batched mode (``application/cloudevents-batch+json``) are accepted as well, so
Knative brokers and other CloudEvents clients can deliver here. ``Ce-Modelid`` (an extension some
setups add) is kept when present.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_TYPES = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
REQUIRED_ATTRIBUTES = ("id", "type", "source", "specversion")
_CORE_ATTRIBUTES = {
    "id",
    "type",
    "source",
    "specversion",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
}
MAX_ID_LENGTH = 200


class CloudEventError(ValueError):
    """The HTTP request is not a usable inference CloudEvent; the message says what to fix."""


@dataclass(frozen=True)
class InferenceEvent:
    """One request or response event of one inference."""

    inference_id: str
    kind: str  # "request" or "response"
    source: str
    time: datetime
    data: bytes
    content_type: str = ""
    inference_service: str = ""
    namespace: str = ""
    component: str = ""
    endpoint: str = ""
    model_id: str = ""
    mode: str = "binary"  # "binary" or "structured"
    metadata: Mapping[str, object] = field(default_factory=dict)


def parse_time(value: str | None) -> datetime:
    """Parse an RFC 3339 time (``Z`` or offset, any fraction length) to naive UTC; now if absent.

    Raises:
        CloudEventError: The value is present but not a timestamp.
    """
    if not value:
        return datetime.now(UTC).replace(tzinfo=None)
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if "." in text:  # Go writes nanoseconds; Python takes at most microseconds
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tail = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as e:
        raise CloudEventError(f"ce-time {value!r} is not an RFC 3339 timestamp") from e
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _json_object(value: str | None) -> dict[str, object]:
    if not value:
        return {}
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError:
        return {"raw": value}
    return loaded if isinstance(loaded, dict) else {"raw": loaded}


def _build(
    attributes: Mapping[str, object], data: bytes, content_type: str, mode: str
) -> InferenceEvent:
    missing = [name for name in REQUIRED_ATTRIBUTES if not attributes.get(name)]
    if missing:
        where = (
            "headers " + ", ".join(f"ce-{m}" for m in missing)
            if mode == "binary"
            else ("attributes " + ", ".join(missing))
        )
        raise CloudEventError(
            f"not a CloudEvent: missing {where}. Send KServe payload-logger events "
            f"(binary mode with ce-* headers, or {STRUCTURED_CONTENT_TYPE})"
        )
    if str(attributes["specversion"]) != "1.0":
        raise CloudEventError(
            f"unsupported CloudEvents specversion {attributes['specversion']!r}; use 1.0"
        )
    event_type = str(attributes["type"])
    if event_type not in EVENT_TYPES:
        raise CloudEventError(
            f"unsupported event type {event_type!r}; "
            f"this collector takes {REQUEST_TYPE} and {RESPONSE_TYPE}"
        )
    inference_id = str(attributes["id"]).strip()
    if len(inference_id) > MAX_ID_LENGTH:
        raise CloudEventError(
            f"ce-id is {len(inference_id)} characters long; at most {MAX_ID_LENGTH}"
        )
    raw_metadata, raw_annotations = attributes.get("metadata"), attributes.get("annotations")
    metadata = {
        "metadata": _json_object(raw_metadata)
        if isinstance(raw_metadata, str)
        else raw_metadata or {},
        "annotations": _json_object(raw_annotations)
        if isinstance(raw_annotations, str)
        else raw_annotations or {},
    }
    return InferenceEvent(
        inference_id=inference_id,
        kind=EVENT_TYPES[event_type],
        source=str(attributes["source"]),
        time=parse_time(str(attributes["time"]) if attributes.get("time") else None),
        data=data,
        content_type=content_type,
        inference_service=str(attributes.get("inferenceservicename") or ""),
        namespace=str(attributes.get("namespace") or ""),
        component=str(attributes.get("component") or ""),
        endpoint=str(attributes.get("endpoint") or ""),
        model_id=str(attributes.get("modelid") or ""),
        mode=mode,
        metadata=metadata,
    )


def _from_structured(obj: object) -> InferenceEvent:
    if not isinstance(obj, dict):
        raise CloudEventError("a structured CloudEvent must be a JSON object")
    attributes = {str(k).lower(): v for k, v in obj.items() if k not in ("data", "data_base64")}
    content_type = str(obj.get("datacontenttype") or "application/json")
    if "data_base64" in obj:
        try:
            data = base64.b64decode(str(obj["data_base64"]), validate=True)
        except (binascii.Error, ValueError) as e:
            raise CloudEventError("data_base64 is not valid base64") from e
    elif "data" in obj:
        payload = obj["data"]
        if isinstance(payload, str) and not content_type.endswith("json"):
            data = payload.encode()
        else:
            data = json.dumps(payload).encode()
    else:
        data = b""
    return _build(attributes, data, content_type, "structured")


def parse_cloudevents(headers: Mapping[str, str], body: bytes) -> list[InferenceEvent]:
    """Turn one HTTP request into the inference events it carries.

    Args:
        headers: The request headers (any capitalisation).
        body: The raw request body.

    Returns:
        One event (binary or structured mode) or several (batched mode).

    Raises:
        CloudEventError: Not a CloudEvent, a missing attribute, an unsupported type or version,
            or an unreadable structured body.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE):
        try:
            parsed = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CloudEventError(f"the {media} body is not valid JSON: {e}") from e
        if media == BATCH_CONTENT_TYPE:
            if not isinstance(parsed, list) or not parsed:
                raise CloudEventError(
                    "a CloudEvents batch must be a non-empty JSON array of events"
                )
            return [_from_structured(item) for item in parsed]
        return [_from_structured(parsed)]
    attributes = {k[3:]: v for k, v in lowered.items() if k.startswith("ce-")}
    return [_build(attributes, body, content_type, "binary")]


def binary_headers(
    event_id: str,
    kind: str,
    *,
    source: str,
    inference_service: str = "",
    namespace: str = "",
    component: str = "predictor",
    endpoint: str = "",
    content_type: str = "application/json",
    time: datetime | None = None,
    model_id: str = "",
) -> dict[str, str]:
    """Headers of a binary-mode event in KServe's format (used by the local payload logger).

    Args:
        event_id: The inference id shared by the request and the response event.
        kind: ``"request"`` or ``"response"``.
        source: ``Ce-Source``.
        inference_service: ``Ce-Inferenceservicename``.
        namespace: ``Ce-Namespace``.
        component: ``Ce-Component``.
        endpoint: ``Ce-Endpoint``.
        content_type: The payload's content type (KServe sends the request's for both).
        time: Event time (default: now, UTC).
        model_id: Optional ``Ce-Modelid``.
    """
    event_type = REQUEST_TYPE if kind == "request" else RESPONSE_TYPE
    stamp = time or datetime.now(UTC)
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": event_id,
        "Ce-Type": event_type,
        "Ce-Source": source,
        "Ce-Time": stamp.isoformat(timespec="microseconds") + "Z",
        "Ce-Inferenceservicename": inference_service,
        "Ce-Namespace": namespace,
        "Ce-Component": component,
        "Ce-Endpoint": endpoint,
        "Ce-Metadata": "{}",
        "Content-Type": content_type,
    }
    if model_id:
        headers["Ce-Modelid"] = model_id
    return headers
