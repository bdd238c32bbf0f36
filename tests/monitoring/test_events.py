"""CloudEvents parsing on KServe's payload-logger format (binary, structured and batched modes)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from monitoring_helpers import REQUEST_TYPE, RESPONSE_TYPE, kserve_headers

from monitoring.events import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    CloudEventError,
    binary_headers,
    parse_cloudevents,
    parse_time,
)


def test_binary_request_event_as_kserve_sends_it() -> None:
    body = b'{"instances": []}'
    [event] = parse_cloudevents(kserve_headers("5f0c-id", "request"), body)
    assert event.inference_id == "5f0c-id"
    assert event.kind == "request"
    assert event.mode == "binary"
    assert event.data == body
    assert event.inference_service == "garbage-classifier"
    assert event.namespace == "garbage"
    assert event.component == "predictor"
    assert event.endpoint == ""
    assert event.source == "http://localhost:9081/"
    assert event.content_type == "application/json"
    # Go's nanoseconds are cut to microseconds, the zone to naive UTC.
    assert event.time == datetime(2026, 11, 26, 4, 20, 31, 123456)


def test_binary_headers_are_case_insensitive_and_modelid_kept() -> None:
    headers = {k.lower(): v for k, v in kserve_headers("abc", "response").items()}
    headers["ce-modelid"] = "garbage-classifier:7"
    [event] = parse_cloudevents(headers, b"{}")
    assert event.kind == "response"
    assert event.model_id == "garbage-classifier:7"


def test_structured_event_with_json_data() -> None:
    payload = {
        "specversion": "1.0",
        "id": "s-1",
        "type": RESPONSE_TYPE,
        "source": "/x",
        "time": "2026-01-02T03:04:05+02:00",
        "inferenceservicename": "garbage-classifier",
        "datacontenttype": "application/json",
        "data": {"predictions": ["glass"]},
    }
    [event] = parse_cloudevents(
        {"Content-Type": STRUCTURED_CONTENT_TYPE}, json.dumps(payload).encode()
    )
    assert event.mode == "structured"
    assert event.kind == "response"
    assert json.loads(event.data) == {"predictions": ["glass"]}
    assert event.time == datetime(2026, 1, 2, 1, 4, 5)
    assert event.inference_service == "garbage-classifier"


def test_structured_event_with_base64_data_and_batch() -> None:
    raw = b"\xff\xd8 not json"
    item = {
        "specversion": "1.0",
        "id": "b-1",
        "type": REQUEST_TYPE,
        "source": "/x",
        "datacontenttype": "image/jpeg",
        "data_base64": base64.b64encode(raw).decode(),
    }
    events = parse_cloudevents(
        {"content-type": BATCH_CONTENT_TYPE}, json.dumps([item, {**item, "id": "b-2"}]).encode()
    )
    assert [e.inference_id for e in events] == ["b-1", "b-2"]
    assert events[0].data == raw
    assert events[0].content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Ce-Id": None}, "ce-id"),
        ({"Ce-Type": "org.kubeflow.serving.inference.outlier"}, "unsupported event type"),
        ({"Ce-Specversion": "0.3"}, "specversion"),
        ({"Ce-Time": "yesterday"}, "RFC 3339"),
    ],
)
def test_bad_binary_events_are_rejected_with_reason(change: dict, message: str) -> None:
    headers = kserve_headers("x", "request")
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    with pytest.raises(CloudEventError, match=message):
        parse_cloudevents(headers, b"{}")


def test_plain_http_post_is_not_a_cloudevent() -> None:
    with pytest.raises(CloudEventError, match="not a CloudEvent"):
        parse_cloudevents({"Content-Type": "application/json"}, b'{"instances": []}')


def test_structured_body_must_be_json() -> None:
    with pytest.raises(CloudEventError, match="not valid JSON"):
        parse_cloudevents({"Content-Type": STRUCTURED_CONTENT_TYPE}, b"{nope")


def test_binary_headers_round_trip() -> None:
    headers = binary_headers(
        "rt-1",
        "response",
        source="http://localhost:8080/",
        inference_service="gc",
        namespace="ns",
        endpoint="default",
        content_type="application/json",
    )
    [event] = parse_cloudevents(headers, b"{}")
    assert (
        event.inference_id,
        event.kind,
        event.inference_service,
        event.namespace,
        event.endpoint,
    ) == ("rt-1", "response", "gc", "ns", "default")
    assert event.component == "predictor"


def test_parse_time_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    assert parse_time(None) >= before.replace(microsecond=0)


@pytest.mark.parametrize("encoded", ["aGVs bG8=", "a", "!!!!", 5])
def test_structured_data_base64_must_be_strict_base64(encoded: object) -> None:
    event = {
        "specversion": "1.0",
        "id": "b64",
        "type": REQUEST_TYPE,
        "source": "/x",
        "data_base64": encoded,
    }
    with pytest.raises(CloudEventError, match="data_base64 is not valid base64"):
        parse_cloudevents({"Content-Type": STRUCTURED_CONTENT_TYPE}, json.dumps(event).encode())


def test_binary_headers_carry_kserve_attributes_and_model_id() -> None:
    headers = binary_headers(
        "h-1",
        "request",
        source="http://localhost:8080/",
        inference_service="gc",
        content_type="application/octet-stream",
        time=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        model_id="gc:3",
    )
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["ce-specversion"] == "1.0" and lowered["ce-type"] == REQUEST_TYPE
    assert lowered["ce-time"] == "2026-01-02T03:04:05.000006Z"
    assert lowered["content-type"] == "application/octet-stream"
    assert (lowered["ce-metadata"], lowered["ce-endpoint"]) == ("{}", "")
    [event] = parse_cloudevents(headers, b"\x00raw")
    assert (event.model_id, event.content_type, event.data) == (
        "gc:3",
        "application/octet-stream",
        b"\x00raw",
    )
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, 6)
