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

The CloudEvents SDK reads binary and structured events (headers, extensions, ``data_base64``) and
writes the binary headers of the local payload logger. It has no batched mode: a batch is split
here and each of its events read as a structured one. What the SDK does not check, or accepts
where this collector must not (a missing ``id`` it would invent, specversion 0.3, other event
types), is checked here, with a message that says what to fix.

Everything here is untrusted input: JSON is measured before it is parsed
(:func:`monitoring.payloads.check_json`), context attributes of structured events must be
strings, a batch holds at most :data:`MAX_BATCH_EVENTS` events, and ``ce-time`` must lie between
:data:`EARLIEST_TIME` and a day from now. Field lengths are the store's to check
(:meth:`monitoring.store.EventMeta.check`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cloudevents.conversion import to_binary
from cloudevents.exceptions import DataUnmarshallerError, GenericException
from cloudevents.http import CloudEvent, from_http, from_json

from monitoring.payloads import PayloadError, brief_error, load_json

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_TYPES = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
REQUIRED_ATTRIBUTES = ("id", "type", "source", "specversion")
#: Most events in one batched request.
MAX_BATCH_EVENTS = 256
#: Event times before this are refused: no inference of this project is older.
EARLIEST_TIME = datetime(2000, 1, 1)
#: How far ahead of the collector's clock an event's time may be (clock skew).
MAX_CLOCK_SKEW = timedelta(days=1)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


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


def parse_time(value: str | None, now: datetime | None = None) -> datetime:
    """Parse an RFC 3339 time (``Z`` or offset, any fraction length) to naive UTC; now if absent.

    Args:
        value: The ``ce-time`` attribute.
        now: The collector's time (naive UTC; default: the clock).

    Raises:
        CloudEventError: The value is present but not a timestamp, or it lies before
            :data:`EARLIEST_TIME` or more than :data:`MAX_CLOCK_SKEW` after ``now``.
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if not value:
        return now
    shown = repr(value[:64]) + ("..." if len(value) > 64 else "")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if "." in text:  # Go writes nanoseconds; Python takes at most microseconds
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tail = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError) as e:  # OverflowError: an offset past year 1 or 9999
        raise CloudEventError(
            f"ce-time {shown} is not an RFC 3339 timestamp, e.g. 2026-01-02T03:04:05.678Z"
        ) from e
    if not EARLIEST_TIME <= parsed <= now + MAX_CLOCK_SKEW:
        raise CloudEventError(
            f"ce-time {shown} is outside {EARLIEST_TIME:%Y-%m-%d} .. a day from now; send the "
            "event's real UTC time, or no ce-time to have the collector stamp its arrival"
        )
    return parsed


def _json_object(value: object) -> object:
    """``ce-metadata`` or ``ce-annotations``: a JSON object, kept as ``{"raw": ...}`` otherwise."""
    if not value:
        return {}
    if not isinstance(value, str):
        return value
    try:
        loaded = load_json(value.encode("utf-8", "surrogatepass"))
    except PayloadError:
        return {"raw": value}
    return loaded if isinstance(loaded, dict) else {"raw": loaded}


def _raw(data: str | bytes) -> str | bytes:
    """The SDK's data unmarshaller: keep the payload as it came (the payload parsers read it)."""
    return data


def _check_context(attributes: Mapping[str, object], mode: str) -> None:
    """Refuse what the SDK would accept or invent: missing attributes, another specversion."""
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
    if mode == "structured":
        wrong = [
            name
            for name in (*REQUIRED_ATTRIBUTES, "time", "datacontenttype")
            if name in attributes and not isinstance(attributes[name], str)
        ]
        if wrong:
            raise CloudEventError(
                f"CloudEvent attributes {', '.join(wrong)} must be strings (CloudEvents 1.0 JSON)"
            )
    if str(attributes["specversion"]) != "1.0":
        raise CloudEventError(
            f"unsupported CloudEvents specversion {attributes['specversion']!r}; use 1.0"
        )


def _inference_event(
    event: CloudEvent, data: bytes, content_type: str, mode: str
) -> InferenceEvent:
    attributes = event.get_attributes()
    event_type = str(attributes["type"])
    if event_type not in EVENT_TYPES:
        raise CloudEventError(
            f"unsupported event type {event_type!r}; "
            f"this collector takes {REQUEST_TYPE} and {RESPONSE_TYPE}"
        )
    inference_id = str(attributes["id"]).strip()
    if not inference_id:
        raise CloudEventError("the CloudEvent id is blank; send the inference's id")

    def text(name: str) -> str:
        value = attributes.get(name)
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CloudEventError(f"CloudEvent attribute {name} must be a string")
        return str(value)

    return InferenceEvent(
        inference_id=inference_id,
        kind=EVENT_TYPES[event_type],
        source=text("source"),
        time=parse_time(text("time") or None),
        data=data,
        content_type=content_type,
        inference_service=text("inferenceservicename"),
        namespace=text("namespace"),
        component=text("component"),
        endpoint=text("endpoint"),
        model_id=text("modelid"),
        mode=mode,
        metadata={
            "metadata": _json_object(attributes.get("metadata")),
            "annotations": _json_object(attributes.get("annotations")),
        },
    )


def _from_binary(headers: Mapping[str, str], body: bytes) -> InferenceEvent:
    _check_context({k[3:]: v for k, v in headers.items() if k.startswith("ce-")}, "binary")
    try:
        event = from_http(headers, body, data_unmarshaller=_raw)
    except (GenericException, ValueError, TypeError) as e:
        raise CloudEventError(f"unreadable binary-mode CloudEvent: {brief_error(e)}") from e
    data = event.get_data()
    payload = data.encode() if isinstance(data, str) else bytes(data or b"")
    return _inference_event(event, payload, headers.get("content-type", ""), "binary")


def _from_structured(obj: object) -> InferenceEvent:
    if not isinstance(obj, dict):
        raise CloudEventError("a structured CloudEvent must be a JSON object")
    if not all(isinstance(k, str) for k in obj):
        raise CloudEventError("a structured CloudEvent's attribute names must be strings")
    attributes = {str(k).lower(): v for k, v in obj.items()}
    _check_context(attributes, "structured")
    encoded = attributes.get("data_base64")
    if encoded is not None and not (isinstance(encoded, str) and _BASE64.fullmatch(encoded)):
        # The SDK decodes leniently, dropping characters outside the alphabet.
        raise CloudEventError("data_base64 is not valid base64")
    try:
        event = from_json(json.dumps(attributes), data_unmarshaller=_raw)
    except DataUnmarshallerError as e:
        raise CloudEventError("data_base64 is not valid base64") from e
    except (GenericException, ValueError, TypeError) as e:
        raise CloudEventError(f"unreadable structured CloudEvent: {brief_error(e)}") from e
    content_type = str(attributes.get("datacontenttype") or "application/json")
    data = event.get_data()
    if isinstance(data, str):  # the JSON text of ``data``: a string payload is taken as it is
        value = json.loads(data)
        text = value if isinstance(value, str) and not content_type.endswith("json") else data
        payload = text.encode()
    else:
        payload = bytes(data or b"")
    return _inference_event(event, payload, content_type, "structured")


def parse_cloudevents(headers: Mapping[str, str], body: bytes) -> list[InferenceEvent]:
    """Turn one HTTP request into the inference events it carries.

    Args:
        headers: The request headers (any capitalisation).
        body: The raw request body.

    Returns:
        One event (binary or structured mode) or several (batched mode).

    Raises:
        CloudEventError: Not a CloudEvent, a missing or wrongly typed attribute, an unsupported
            type or version, a time out of range, an unreadable structured body or JSON over
            the limits, or a batch of more than :data:`MAX_BATCH_EVENTS` events.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    media = lowered.get("content-type", "").split(";")[0].strip().lower()
    if media not in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE):
        return [_from_binary(lowered, body)]
    try:
        parsed = load_json(body or b"null", f"the {media} body")
    except PayloadError as e:
        raise CloudEventError(str(e)) from e
    if media == STRUCTURED_CONTENT_TYPE:
        return [_from_structured(parsed)]
    if not isinstance(parsed, list) or not parsed:
        raise CloudEventError("a CloudEvents batch must be a non-empty JSON array of events")
    if len(parsed) > MAX_BATCH_EVENTS:
        raise CloudEventError(
            f"the batch holds {len(parsed)} events; at most {MAX_BATCH_EVENTS} per request"
        )
    return [_from_structured(item) for item in parsed]


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
    stamp = time or datetime.now(UTC)
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "source": source,
        "time": stamp.isoformat(timespec="microseconds") + "Z",
        "datacontenttype": content_type,
        "inferenceservicename": inference_service,
        "namespace": namespace,
        "component": component,
        "endpoint": endpoint,
        "metadata": "{}",
    }
    if model_id:
        attributes["modelid"] = model_id
    headers, _ = to_binary(CloudEvent(attributes), data_marshaller=lambda _: b"")
    return headers
