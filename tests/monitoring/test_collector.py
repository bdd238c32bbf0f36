"""The collector over real HTTP: KServe events in, rows stored, feedback, live accuracy, metrics."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from monitoring_helpers import REQUEST_TYPE, kserve_headers, make_jpeg, v1_request, v1_response

from monitoring.events import STRUCTURED_CONTENT_TYPE

pytestmark = pytest.mark.integration
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def _log(url: str, event_id: str, images: list[bytes], labels: list[str]) -> None:
    r = httpx.post(
        f"{url}/events", content=v1_request(images), headers=kserve_headers(event_id, "request")
    )
    assert r.status_code == 202, r.text
    r = httpx.post(
        f"{url}/events",
        content=v1_response(labels, CLASSES),
        headers=kserve_headers(event_id, "response"),
    )
    assert r.status_code == 202, r.text


def test_events_feedback_accuracy_and_metrics(secured_collector, collector_auth_header) -> None:
    url = secured_collector.url
    glass, paper = make_jpeg((60, 160, 90), 1), make_jpeg((235, 235, 225), 2)
    _log(url, "req-1", [glass, paper], ["glass", "glass"])
    _log(url, "req-2", [paper], ["paper"])

    rows = secured_collector.store.load_window().sort_values(["inference_id", "item"])
    assert list(rows["inference_id"]) == ["req-1", "req-1", "req-2"]
    assert list(rows["prediction"]) == ["glass", "glass", "paper"]
    assert (
        rows["brightness"].notna().all()
        and rows["inference_service"].eq("garbage-classifier").all()
    )
    assert (
        rows.iloc[1]["brightness"] > rows.iloc[0]["brightness"]
    )  # the paper image is the bright one

    r = httpx.post(
        f"{url}/feedback",
        json=[
            {"inference_id": "req-1", "item": 0, "label": "glass"},
            {"inference_id": "req-1", "item": 1, "label": "paper"},
            {"inference_id": "req-2", "label": "paper"},
        ],
        headers=collector_auth_header,
    )
    assert r.status_code == 200, r.text
    assert r.json()["matched"] == 3

    labelled = secured_collector.store.load_window(labelled_only=True).sort_values(
        ["inference_id", "item"]
    )
    assert list(labelled["true_label"]) == ["glass", "paper", "paper"]

    body = httpx.get(f"{url}/metrics").text
    assert 'garbage_monitoring_events_total{mode="binary",type="request"} 2.0' in body
    assert 'garbage_monitoring_logged_images_total{status="ok"} 3.0' in body
    assert 'garbage_monitoring_feedback_total{result="matched"} 3.0' in body
    assert "garbage_live_labelled" in body and "garbage_monitoring_feature_seconds_bucket" in body


def test_live_accuracy_over_recent_events(secured_collector, collector_auth_header) -> None:
    """Events stamped now fall in the 1h window: the gauges show the live accuracy, over every
    label and over the review's random picks alone."""
    url = secured_collector.url
    image = make_jpeg((150, 150, 160), 5)
    for i, (predicted, truth, selection) in enumerate(
        [
            ("metal", "metal", "random"),
            ("metal", "glass", "random"),
            ("glass", "glass", "uncertain"),
            ("metal", "metal", None),
        ]
    ):
        headers = kserve_headers(f"now-{i}", "request")
        headers.pop("Ce-Time")  # no time: the collector stamps it on arrival
        assert (
            httpx.post(f"{url}/events", content=v1_request([image]), headers=headers).status_code
            == 202
        )
        headers = kserve_headers(f"now-{i}", "response")
        headers.pop("Ce-Time")
        assert (
            httpx.post(
                f"{url}/events", content=v1_response([predicted], CLASSES), headers=headers
            ).status_code
            == 202
        )
        assert (
            httpx.post(
                f"{url}/feedback",
                json={"inference_id": f"now-{i}", "label": truth}
                | ({"selection": selection} if selection else {}),
                headers=collector_auth_header,
            ).status_code
            == 200
        )
    stats = httpx.get(f"{url}/accuracy", params={"window": "1h"}).json()
    assert stats["labelled"] == 4 and stats["accuracy"] == pytest.approx(0.75)
    assert stats["random"] == {"labelled": 2, "accuracy": 0.5}
    assert stats["recall"] == {
        "cardboard": None,
        "glass": 0.5,
        "metal": 1.0,
        "paper": None,
        "plastic": None,
        "trash": None,
    }
    body = httpx.get(f"{url}/metrics").text
    assert 'garbage_live_accuracy{window="1h"} 0.75' in body
    assert 'garbage_live_recall{label="glass",window="1h"} 0.5' in body
    assert 'garbage_live_labelled{window="24h"} 4.0' in body
    assert 'garbage_live_accuracy_random{window="1h"} 0.5' in body
    assert 'garbage_live_labelled_random{window="24h"} 2.0' in body


def test_structured_mode_and_v2_payloads(secured_collector) -> None:
    url = secured_collector.url
    image = make_jpeg((40, 90, 200), 7)
    request = {
        "specversion": "1.0",
        "id": "v2-1",
        "type": REQUEST_TYPE,
        "source": "/broker",
        "datacontenttype": "application/json",
        "data": {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(image).decode()],
                }
            ]
        },
    }
    r = httpx.post(
        f"{url}/events",
        content=json.dumps(request),
        headers={"Content-Type": STRUCTURED_CONTENT_TYPE},
    )
    assert r.status_code == 202 and r.json()["events"][0]["protocol"] == "v2"
    response = {
        "model_name": "garbage-classifier",
        "model_version": "4",
        "outputs": [
            {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["plastic"]},
            {"name": "score", "shape": [1], "datatype": "FP32", "data": [0.66]},
        ],
    }
    r = httpx.post(
        f"{url}/events", content=json.dumps(response), headers=kserve_headers("v2-1", "response")
    )
    assert r.status_code == 202
    [row] = secured_collector.store.load_window().to_dict("records")
    assert (row["prediction"], row["score"], row["model_id"]) == (
        "plastic",
        pytest.approx(0.66),
        "garbage-classifier:4",
    )


def test_client_mistakes_get_4xx_with_a_reason(secured_collector, collector_auth_header) -> None:
    url = secured_collector.url
    auth = collector_auth_header
    r = httpx.post(f"{url}/events", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not a CloudEvent" in r.json()["detail"]
    r = httpx.post(
        f"{url}/events", content=b'{"foo": 1}', headers=kserve_headers("bad-1", "request")
    )
    assert r.status_code == 400 and "instances" in r.json()["detail"]
    r = httpx.post(
        f"{url}/feedback", json={"inference_id": "unknown", "label": "glass"}, headers=auth
    )
    assert r.status_code == 404 and "no logged prediction" in r.json()["detail"]
    r = httpx.post(f"{url}/feedback", json={"inference_id": "x", "label": "banana"}, headers=auth)
    assert r.status_code == 422 and "unknown labels" in r.json()["detail"]
    r = httpx.post(f"{url}/feedback", json={"label": "glass"}, headers=auth)
    assert r.status_code == 422 and "inference_id: Field required" in r.json()["detail"]
    r = httpx.post(
        f"{url}/feedback",
        content=b"not json",
        headers={"Content-Type": "application/json", **auth},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    assert httpx.get(f"{url}/accuracy", params={"window": "soon"}).status_code == 422
    # An undecodable image is logged as such, not refused: the model answered something for it.
    r = httpx.post(
        f"{url}/events",
        content=v1_request([b"not an image"]),
        headers=kserve_headers("junk-1", "request"),
    )
    assert r.status_code == 202 and r.json()["events"][0]["unreadable"] == 1
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    assert (
        'garbage_monitoring_event_errors_total{reason="not_a_cloudevent"} 1.0'
        in httpx.get(f"{url}/metrics").text
    )
