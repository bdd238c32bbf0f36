"""Reading images from logged v1/v2 requests and predictions from logged responses."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from monitoring_helpers import make_jpeg, v1_request, v1_response

from garbage.core.protocol import pack_bytes_tensor
from monitoring.payloads import (
    MAX_ITEMS,
    MAX_JSON_CONTAINERS,
    PayloadError,
    check_json,
    load_json,
    parse_request,
    parse_response,
)

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


@pytest.fixture
def jpeg() -> bytes:
    return make_jpeg((60, 160, 90), seed=3)


def test_v1_image_bytes_b64(jpeg: bytes) -> None:
    payload = parse_request(v1_request([jpeg, jpeg]))
    assert payload.protocol == "v1"
    assert [item.data for item in payload.items] == [jpeg, jpeg]


def test_v1_other_instance_shapes(jpeg: bytes) -> None:
    b64 = base64.b64encode(jpeg).decode()
    pixels = np.full((4, 5, 3), 7, dtype=np.uint8).tolist()
    body = json.dumps({"instances": [b64, {"b64": b64}, pixels, {"weird": 1}, "%%%"]}).encode()
    items = parse_request(body).items
    assert items[0].data == jpeg and items[1].data == jpeg
    assert items[2].pixels.shape == (4, 5, 3)
    assert items[3].error == "bad_instance"
    assert items[4].error == "bad_base64"


def test_v2_bytes_json(jpeg: bytes) -> None:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(jpeg).decode()] * 2,
                }
            ]
        }
    ).encode()
    payload = parse_request(body)
    assert payload.protocol == "v2"
    assert [i.data for i in payload.items] == [jpeg, jpeg]


def test_v2_bytes_binary_extension(jpeg: bytes) -> None:
    other = jpeg_bytes_other()
    raw = b"".join(struct.pack("<I", len(b)) + b for b in (jpeg, other))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    payload = parse_request(header + raw, "application/octet-stream")
    assert [i.data for i in payload.items] == [jpeg, other]


def jpeg_bytes_other() -> bytes:
    return make_jpeg((200, 40, 40), seed=9)


def test_v2_uint8_json_and_binary() -> None:
    batch = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 4, 6, 3],
                    "datatype": "UINT8",
                    "data": batch.ravel().tolist(),
                }
            ]
        }
    ).encode()
    items = parse_request(body).items
    assert len(items) == 2 and np.array_equal(items[1].pixels, batch[1])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 4, 6, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ]
        }
    ).encode()
    items = parse_request(header + batch.tobytes()).items
    assert np.array_equal(items[0].pixels, batch[0])


def test_raw_image_body(jpeg: bytes) -> None:
    payload = parse_request(jpeg, "image/jpeg")
    assert payload.protocol == "raw" and payload.items[0].data == jpeg


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"foo": 1}', "neither"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}',
            "no BYTES or UINT8",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [1]}]}',
            "values for shape",
        ),
    ],
)
def test_bad_requests(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_request(body)


def test_v1_response_objects() -> None:
    payload = parse_response(v1_response(["glass", "trash"], CLASSES), CLASSES)
    assert [(p.label, p.score) for p in payload.items] == [("glass", 0.9), ("trash", 0.9)]
    assert payload.items[0].probabilities["glass"] == 0.9


def test_v1_response_lists_labels_and_indices() -> None:
    probs = [0.1, 0.6, 0.1, 0.1, 0.05, 0.05]
    body = json.dumps({"predictions": [probs, "paper", 3]}).encode()
    items = parse_response(body, CLASSES).items
    assert (items[0].label, items[0].score) == ("glass", 0.6)
    assert items[1].label == "paper" and items[1].score is None
    assert items[2].label == "paper"


def test_v2_response_labels_and_probabilities() -> None:
    body = json.dumps(
        {
            "model_name": "garbage-classifier",
            "model_version": "3",
            "outputs": [
                {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["metal", "paper"]},
                {
                    "name": "probabilities",
                    "shape": [2, 6],
                    "datatype": "FP32",
                    "data": [0, 0, 0.7, 0.3, 0, 0, 0, 0, 0.2, 0.8, 0, 0],
                },
            ],
        }
    ).encode()
    payload = parse_response(body, CLASSES)
    assert payload.model_name == "garbage-classifier" and payload.model_version == "3"
    assert [(p.label, round(p.score, 3)) for p in payload.items] == [("metal", 0.7), ("paper", 0.8)]


def test_v2_response_probabilities_only() -> None:
    body = json.dumps(
        {
            "outputs": [
                {
                    "name": "probabilities",
                    "shape": [1, 6],
                    "datatype": "FP32",
                    "data": [0.05, 0.05, 0.05, 0.05, 0.05, 0.75],
                }
            ]
        }
    ).encode()
    [item] = parse_response(body, CLASSES).items
    assert item.label == "trash" and item.score == pytest.approx(0.75)


def test_bad_response() -> None:
    with pytest.raises(PayloadError, match="neither"):
        parse_response(b'{"result": 1}', CLASSES)


def test_v2_json_body_with_trailing_whitespace(jpeg: bytes) -> None:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(jpeg).decode()],
                }
            ]
        }
    ).encode()
    assert [i.data for i in parse_request(body + b"\r\n").items] == [jpeg]


def test_v2_binary_response_labels_scores_and_probabilities() -> None:
    labels = pack_bytes_tensor([b"metal", b"paper"])
    scores = np.array([0.7, 0.8], dtype=np.float32).tobytes()
    probs = np.array([[0, 0, 0.7, 0.3, 0, 0], [0, 0, 0.2, 0.8, 0, 0]], dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "outputs": [
                {"name": n, "shape": s, "datatype": d, "parameters": {"binary_data_size": len(b)}}
                for n, s, d, b in [
                    ("label", [2], "BYTES", labels),
                    ("score", [2], "FP32", scores),
                    ("probabilities", [2, 6], "FP32", probs),
                ]
            ]
        }
    ).encode()
    items = parse_response(header + labels + scores + probs, CLASSES).items
    assert [(p.label, round(p.score, 3)) for p in items] == [("metal", 0.7), ("paper", 0.8)]
    assert round(items[1].probabilities["metal"], 3) == 0.2


@pytest.mark.parametrize(
    ("size", "tail", "message"),
    [
        (7, pack_bytes_tensor([b"ab"]), "declares binary_data_size 7 but only 6 bytes remain"),
        (6, b"\x05\x00\x00\x00ab", "element 0 claims 5 bytes but 2 remain"),
        (8, pack_bytes_tensor([b"ab"]) + b"\x01\x00", "a length prefix is cut off"),
        (8, pack_bytes_tensor([b"abcd"]) + b"xyz", "3 bytes follow the JSON"),
    ],
)
def test_binary_data_that_does_not_add_up(size: int, tail: bytes, message: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    with pytest.raises(PayloadError, match=message):
        parse_request(header + tail, "application/octet-stream")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 33 + b"]" * 33, "nested more than 32 levels"),
        (b"[" * 100_000, "nested more than 32 levels"),  # never reaches the parser's recursion
        (b"[" + b"{}," * MAX_JSON_CONTAINERS + b"{}]", "more than 2000000 objects and arrays"),
    ],
)
def test_json_is_measured_before_it_is_parsed(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        check_json(body)


def test_json_limits_leave_binary_data_and_strings_alone() -> None:
    """Brackets inside strings and in the binary data after the header are not JSON."""
    check_json(json.dumps({"a": "[" * 100 + "{" * 100, "b": [[[]]]}).encode())
    pixels = np.full((1, 40, 40, 3), ord("["), dtype=np.uint8)  # bytes that read as '['
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(pixels.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ]
        }
    ).encode()
    [item] = parse_request(header + pixels.tobytes()).items
    assert item.pixels.shape == (40, 40, 3) and int(item.pixels[0, 0, 0]) == ord("[")
    assert load_json(b" [[1], {}] ") == [[1], {}]


def _input(**fields: object) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", **fields}]}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_input(shape="1x2", data=[1]), "shape must be a list of non-negative integers"),
        (_input(shape=[1, -2, 2, 3], data=[1]), "shape must be a list"),
        (_input(shape=[True, 1, 1, 3], data=[1, 2, 3]), "shape must be a list"),
        (_input(shape=[1.0, 1, 1, 3], data=[1, 2, 3]), "shape must be a list"),
        (_input(shape=[MAX_ITEMS + 1, 1, 1, 3], data=[1]), f"more than {MAX_ITEMS} images"),
        (_input(shape=[1, 2**40, 2**40, 3], data=[1, 2, 3]), "3 values for shape"),
        (_input(shape=[1, 1, 1, 3], data=[1, 2, 3, 4]), r"shape \[1, 1, 1, 3\] holds more than 3"),
        (
            json.dumps(
                {"inputs": [{"name": "b", "datatype": "BYTES", "data": [""] * 2000}]}
            ).encode(),
            f"holds more than {MAX_ITEMS} values",
        ),
        (json.dumps({"instances": ["AAAA"] * (MAX_ITEMS + 1)}).encode(), f"more than {MAX_ITEMS}"),
        (b'{"instances": [' + b"9" * 5000 + b"]}", "not usable JSON"),
    ],
)
def test_wrongly_typed_and_oversized_requests(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_request(body)


def test_pixel_values_that_are_not_finite_make_the_image_unreadable() -> None:
    [item] = parse_request(b'{"instances": [[[[NaN, 1, 2]]]]}').items
    assert item.error == "bad_pixels" and "finite" in item.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"predictions": [{"label": "glass", "probabilities": {"glass": "high"}}]},
            "a probability",
        ),
        ({"predictions": [{"label": "glass", "score": {"a": 1}}]}, "a score must be a number"),
        ({"predictions": [{"label": "glass", "score": True}]}, "a score must be a number"),
        ({"predictions": [{"label": "glass", "score": 10**400}]}, "a score is out of range"),
        ({"predictions": ["glass"] * (MAX_ITEMS + 1)}, f"more than {MAX_ITEMS} predictions"),
        (
            {"outputs": [{"name": "score", "shape": [1], "datatype": "FP32", "data": ["x"]}]},
            "must hold numbers",
        ),
        (
            {"outputs": [{"name": "p", "shape": "1,6", "datatype": "FP32", "data": [0.5]}]},
            "shape must be a list",
        ),
        (
            {
                "model_name": ["gc"],
                "outputs": [{"name": "label", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
            },
            "'model_name' must be a string",
        ),
    ],
)
def test_wrongly_typed_responses(body: dict, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_response(json.dumps(body).encode(), CLASSES)


@pytest.mark.parametrize(
    "body",
    [
        b'{"predictions": [{"label": "glass", "score": NaN}]}',
        b'{"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [Infinity]}]}',
    ],
)
def test_scores_and_labels_must_be_finite(body: bytes) -> None:
    with pytest.raises(PayloadError, match="finite"):
        parse_response(body, CLASSES)


def test_binary_scores_must_be_finite_and_whole() -> None:
    scores = np.array([np.inf], dtype=np.float32).tobytes()
    header = {"name": "score", "shape": [1], "datatype": "FP32"}
    for tail, message in ((scores, "finite"), (scores[:3], "not a whole number of values")):
        body = json.dumps(
            {"outputs": [{**header, "parameters": {"binary_data_size": len(tail)}}]}
        ).encode()
        with pytest.raises(PayloadError, match=message):
            parse_response(body + tail, CLASSES)
