"""CloudEvents parsing on KServe's payload-logger format (binary, structured and batched modes)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from monitoring_helpers import REQUEST_TYPE, RESPONSE_TYPE, kserve_headers

from monitoring.events import (
    BATCH_CONTENT_TYPE,
    EARLIEST_TIME,
    MAX_BATCH_EVENTS,
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


NOW = datetime(2026, 12, 1, 12, 0, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-01T11:00:00Z", datetime(2026, 12, 1, 11)),
        ("2026-12-02T11:59:59+00:00", datetime(2026, 12, 2, 11, 59, 59)),  # a skewed clock
        ("2000-01-01T00:00:00Z", EARLIEST_TIME),
    ],
)
def test_times_within_the_calendar_range(value: str, expected: datetime) -> None:
    assert parse_time(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0001-01-01T00:00:00+01:00", "not an RFC 3339"),  # before year 1 in UTC
        ("9999-12-31T23:59:59-01:00", "not an RFC 3339"),  # after year 9999 in UTC
        ("1999-12-31T23:59:59Z", "outside 2000-01-01"),
        ("2026-12-02T12:00:01Z", "outside 2000-01-01"),  # more than a day ahead
        ("2026-13-01T00:00:00Z", "not an RFC 3339"),
        ("x" * 10_000, r"'x{64}'\.\.\. is not"),  # quoted, but cut
    ],
)
def test_times_outside_the_calendar_range_are_refused(value: str, message: str) -> None:
    with pytest.raises(CloudEventError, match=message):
        parse_time(value, now=NOW)


def _structured(**attributes: object) -> bytes:
    event = {"specversion": "1.0", "id": "s", "type": REQUEST_TYPE, "source": "/x", "data": {}}
    return json.dumps({**event, **attributes}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_structured(id=7), "id must be strings"),
        (_structured(source=["/x"]), "source must be strings"),
        (_structured(time=1_700_000_000), "time must be strings"),
        (_structured(id="   "), "blank"),
        (_structured(inferenceservicename={"a": 1}), "inferenceservicename must be a string"),
        (b"[" * 100 + b"]" * 100, "nested more than 32 levels"),
        (b'{"id": ' + b"1" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_wrongly_typed_or_oversized_structured_events(body: bytes, message: str) -> None:
    with pytest.raises(CloudEventError, match=message):
        parse_cloudevents({"Content-Type": STRUCTURED_CONTENT_TYPE}, body)


def test_a_batch_holds_a_limited_number_of_events() -> None:
    item = json.loads(_structured())
    body = json.dumps([item] * MAX_BATCH_EVENTS).encode()
    assert len(parse_cloudevents({"Content-Type": BATCH_CONTENT_TYPE}, body)) == MAX_BATCH_EVENTS
    body = json.dumps([item] * (MAX_BATCH_EVENTS + 1)).encode()
    with pytest.raises(CloudEventError, match=f"at most {MAX_BATCH_EVENTS}"):
        parse_cloudevents({"Content-Type": BATCH_CONTENT_TYPE}, body)


def test_metadata_headers_that_are_not_usable_json_are_kept_raw() -> None:
    headers = kserve_headers("m", "request")
    headers["Ce-Metadata"] = "[" * 1000
    [event] = parse_cloudevents(headers, b"{}")
    assert event.metadata["metadata"] == {"raw": "[" * 1000}
