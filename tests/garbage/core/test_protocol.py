"""The one v1/v2 wire format: BYTES tensors, base64, the binary extension, the v1/v2 encoders."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable

import numpy as np
import pytest
from support import CLASSES, jpeg_bytes

from garbage.core.classifier import INPUT_NAME, Prediction
from garbage.core.protocol import (
    BINARY_DATA_SIZE,
    BYTES_INPUT,
    CLASSES_PARAMETER,
    INFERENCE_HEADER,
    PIXELS_INPUT,
    ProtocolError,
    classes_parameter,
    decode_b64,
    pack_bytes_tensor,
    split_at_header_length,
    split_leading_json,
    tensor_chunks,
    unpack_bytes_tensor,
    v1_instance_b64,
    v1_request,
    v1_response,
    v2_pixels_body,
)


def _binary_input(name: str, size: object) -> dict:
    return {"name": name, "datatype": "BYTES", "shape": [1], "parameters": {BINARY_DATA_SIZE: size}}


@pytest.mark.parametrize(
    "elements",
    [[], [b""], [b"", b"", b""], [b"\xff\xd8\xff jpeg", b"", b"\x00" * 300], [bytes(range(256))]],
)
def test_bytes_tensor_round_trips_including_empty_elements(elements: list[bytes]) -> None:
    raw = pack_bytes_tensor(elements)
    assert len(raw) == sum(4 + len(e) for e in elements)
    assert unpack_bytes_tensor(raw) == elements


def test_bytes_tensor_elements_are_prefixed_with_a_little_endian_4_byte_length() -> None:
    assert pack_bytes_tensor([b"xy", b""]) == b"\x02\x00\x00\x00xy\x00\x00\x00\x00"
    assert unpack_bytes_tensor(b"\x00\x01\x00\x00" + b"a" * 256) == [b"a" * 256]


def test_strict_base64_round_trips_any_bytes() -> None:
    data = bytes(range(256)) * 3
    assert decode_b64(base64.b64encode(data).decode(), "x") == data
    assert decode_b64("", "x") == b""


def test_v1_request_is_read_back_by_v1_instance_b64() -> None:
    images = [jpeg_bytes((10, 200, 30)), b"", b"\x89PNG"]
    document = json.loads(json.dumps(v1_request(images)))
    assert list(document) == ["instances"]
    assert all(list(instance) == [BYTES_INPUT] for instance in document["instances"])
    texts = [v1_instance_b64(instance) for instance in document["instances"]]
    assert [decode_b64(t, "instance") for t in texts if t is not None] == images


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ({"image_bytes": {"b64": "aGk="}}, "aGk="),
        ({"b64": "aGk="}, "aGk="),
        ({"image_bytes": {"b64": 5}}, None),
        ({"image_bytes": "aGk="}, None),
        ({"image": {"b64": "aGk="}}, None),
        ("aGk=", None),
        ([1, 2, 3], None),
    ],
)
def test_v1_instance_b64_accepts_only_the_two_documented_shapes(instance, expected) -> None:
    assert v1_instance_b64(instance) == expected


def test_split_at_header_length_cuts_the_body_and_keeps_non_utf8_binary_as_is() -> None:
    header = b'{"inputs": []}'
    binary = b"\xff\xfe\x80\x00 not utf-8"
    assert split_at_header_length(header + binary, str(len(header))) == (header, binary)
    assert split_at_header_length(header + binary, None) == (header + binary, b"")


def test_tensor_chunks_cut_in_order_and_skip_tensors_with_data() -> None:
    tensors = [
        _binary_input("a", 3),
        {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["aGk="]},
        _binary_input("c", 0),
        _binary_input("d", 2),
    ]
    assert tensor_chunks(tensors, b"abcde") == [b"abc", None, b"", b"de"]
    assert tensor_chunks([tensors[1]], b"") == [None]


def test_a_tensor_with_data_owns_no_binary_bytes_even_if_it_declares_some() -> None:
    tensor = {**_binary_input("a", 2), "data": ["aGk="]}
    with pytest.raises(ProtocolError, match="2 bytes follow the JSON"):
        tensor_chunks([tensor], b"xy")


def test_leading_json_is_found_without_the_header_length_before_non_utf8_binary() -> None:
    pixels = np.array([[[[255, 254, 128], [0, 192, 193]]]], dtype=np.uint8)  # invalid UTF-8
    body, header_length = v2_pixels_body(pixels)
    document, binary = split_leading_json(body)
    assert document == json.loads(body[:header_length])
    assert binary == body[header_length:] == pixels.tobytes()


def test_leading_json_keeps_binary_data_that_looks_like_whitespace() -> None:
    pixels = np.full((1, 2, 2, 3), ord(" "), dtype=np.uint8)
    body, _ = v2_pixels_body(pixels)
    document, binary = split_leading_json(body)
    assert binary == pixels.tobytes()
    assert tensor_chunks(document["inputs"], binary) == [pixels.tobytes()]


def test_whitespace_between_the_json_and_the_declared_binary_belongs_to_the_header() -> None:
    header = json.dumps({"inputs": [_binary_input("a", 3)]}).encode()
    document, binary = split_leading_json(b"\n " + header + b" \r\n\t" + b"abc")
    assert document["inputs"][0]["name"] == "a" and binary == b"abc"
    document, binary = split_leading_json(b'{"inputs": [{"data": [1]}]}\n')
    assert binary == b""
    assert tensor_chunks(document["inputs"], binary) == [None]


def test_bytes_after_the_json_that_no_size_declares_are_left_for_tensor_chunks_to_reject() -> None:
    header = json.dumps({"inputs": [_binary_input("a", 3)]}).encode()
    document, binary = split_leading_json(header + b"  xyabc")
    assert binary == b"  xyabc"
    with pytest.raises(ProtocolError, match=r"^4 bytes follow the JSON that no input's"):
        tensor_chunks(document["inputs"], binary)


def test_v2_pixels_body_declares_its_header_length_and_size() -> None:
    pixels = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    view = np.ascontiguousarray(pixels.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not view.flags.c_contiguous
    body, header_length = v2_pixels_body(view)
    header, binary = split_at_header_length(body, str(header_length))
    [tensor] = json.loads(header)["inputs"]
    assert tensor == {
        "name": PIXELS_INPUT,
        "shape": [2, 3, 4, 3],
        "datatype": "UINT8",
        "parameters": {BINARY_DATA_SIZE: pixels.nbytes},
    }
    [chunk] = tensor_chunks([tensor], binary)
    assert chunk is not None
    np.testing.assert_array_equal(np.frombuffer(chunk, np.uint8).reshape(2, 3, 4, 3), pixels)


def test_classes_parameter_is_a_json_list_in_a_string() -> None:
    parameters = classes_parameter(tuple(CLASSES))
    assert isinstance(parameters[CLASSES_PARAMETER], str)
    assert json.loads(parameters[CLASSES_PARAMETER]) == CLASSES


def test_v1_response_wraps_the_predictions_in_order() -> None:
    rows = [{"label": c, "score": 0.5, "probabilities": {c: 0.5}} for c in CLASSES[:3]]
    assert v1_response(iter(rows)) == {"predictions": rows}


def test_the_pixel_input_is_named_like_the_onnx_model_input() -> None:
    assert PIXELS_INPUT == INPUT_NAME


REJECTIONS: list[tuple[str, Callable[[], object], str, str]] = [
    (
        "cut-off-prefix",
        lambda: unpack_bytes_tensor(b"\x05\x00"),
        "bad_tensor_data",
        "malformed BYTES tensor: a length prefix is cut off",
    ),
    (
        "cut-off-prefix-after-an-element",
        lambda: unpack_bytes_tensor(pack_bytes_tensor([b"ab"]) + b"\x01\x00\x00"),
        "bad_tensor_data",
        "a length prefix is cut off",
    ),
    (
        "element-overruns",
        lambda: unpack_bytes_tensor(pack_bytes_tensor([b"a"]) + b"\x09\x00\x00\x00xy"),
        "bad_tensor_data",
        "element 1 claims 9 bytes but 2 remain",
    ),
    (
        "b64-bad-alphabet",
        lambda: decode_b64("not base64!", "instance 3"),
        "invalid_base64",
        "instance 3 is not valid base64",
    ),
    ("b64-bad-padding", lambda: decode_b64("aGk", "x"), "invalid_base64", "x is not valid base64"),
    ("b64-newline", lambda: decode_b64("aGk=\n", "x"), "invalid_base64", "x is not valid base64"),
    ("b64-not-ascii", lambda: decode_b64("aGé=", "x"), "invalid_base64", "x is not valid base64"),
    (
        "header-length-not-an-integer",
        lambda: split_at_header_length(b"{}", "ten"),
        "bad_request",
        f"{INFERENCE_HEADER} must be an integer, got 'ten'",
    ),
    (
        "header-length-zero",
        lambda: split_at_header_length(b"{}", "0"),
        "bad_request",
        f"{INFERENCE_HEADER} 0 is outside the body's 2 bytes",
    ),
    (
        "header-length-past-the-body",
        lambda: split_at_header_length(b"{}", "3"),
        "bad_request",
        f"{INFERENCE_HEADER} 3 is outside the body's 2 bytes",
    ),
    (
        "no-data-no-size",
        lambda: tensor_chunks([{"name": "a", "datatype": "BYTES", "shape": [1]}], b""),
        "bad_request",
        "input 'a' has neither 'data' nor an integer parameters.binary_data_size",
    ),
    *(
        (
            f"size-{size!r}",
            lambda size=size: tensor_chunks([_binary_input("a", size)], b"abc"),
            "bad_request",
            "input 'a' has neither 'data' nor an integer parameters.binary_data_size",
        )
        for size in (-1, True, 2.0, "3", None)
    ),
    (
        "parameters-not-an-object",
        lambda: tensor_chunks([{"name": "a", "parameters": [3]}], b"abc"),
        "bad_request",
        "input 'a' has neither 'data' nor",
    ),
    (
        "size-overruns",
        lambda: tensor_chunks([_binary_input("a", 2), _binary_input("b", 9)], b"abcde"),
        "bad_request",
        "input 'b' declares binary_data_size 9 but only 3 bytes remain in the body",
    ),
    (
        "bytes-left-over",
        lambda: tensor_chunks([_binary_input("a", 2)], b"abcde"),
        "bad_request",
        "3 bytes follow the JSON that no input's binary_data_size accounts for",
    ),
    (
        "output-bytes-left-over",
        lambda: tensor_chunks([{"name": "label", "data": ["x"]}], b"ab", "output"),
        "bad_request",
        "2 bytes follow the JSON that no output's binary_data_size accounts for",
    ),
    (
        "leading-json-not-json",
        lambda: split_leading_json(b"  not json"),
        "malformed_json",
        "the payload is not JSON: Expecting value at byte 2",
    ),
    (
        "leading-json-cut-off",
        lambda: split_leading_json(b'{"inputs": ['),
        "malformed_json",
        "the payload is not JSON",
    ),
    (
        "leading-json-not-utf8",
        lambda: split_leading_json(b'{"name": "\xff"}\x00\x01'),
        "malformed_json",
        "the JSON header is not valid UTF-8 JSON",
    ),
]


@pytest.mark.parametrize(
    ("call", "reason", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_every_rejection_has_a_reason_and_says_what_is_wrong(call, reason, message) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)) as caught:
        call()
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_every_reason_is_one_of_servings_metric_labels() -> None:
    from serving.errors import REASONS

    assert {r[2] for r in REJECTIONS} <= set(REASONS)


# What the payload logger encodes, serving and the collector read back.


def test_logged_v1_requests_are_read_back_by_serving_and_the_collector() -> None:
    from monitoring.payload_logger import encode_request
    from monitoring.payloads import parse_request
    from serving.payload import v1_images
    from serving.settings import ServingSettings

    images = [jpeg_bytes((200, 30, 30), seed=1), jpeg_bytes((30, 30, 200), seed=2, fmt="PNG")]
    body, content_type = encode_request(images)
    assert content_type == "application/json"
    assert v1_images(json.loads(body), ServingSettings()) == images
    payload = parse_request(body, content_type)
    assert payload.protocol == "v1" and [item.data for item in payload.items] == images


def test_logged_pixel_requests_are_read_back_by_serving_and_the_collector() -> None:
    from monitoring.payload_logger import encode_request
    from monitoring.payloads import parse_request
    from serving.payload import parse_v2_rest, v2_images
    from serving.settings import ServingSettings

    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    pixels[0] = ord(" ")  # binary data that starts like JSON whitespace
    body, content_type = encode_request(pixels)
    _, header_length = v2_pixels_body(pixels)
    request = parse_v2_rest(body, str(header_length), "garbage-classifier")
    np.testing.assert_array_equal(v2_images(request, ServingSettings()), pixels)
    items = parse_request(body, content_type).items
    assert len(items) == 3
    for item, image in zip(items, pixels, strict=True):
        np.testing.assert_array_equal(item.pixels, image)


def test_logged_v1_responses_are_read_back_by_the_collector() -> None:
    from monitoring.payloads import parse_response

    predictions = [
        Prediction("glass", 0.7, {c: (0.7 if c == "glass" else 0.06) for c in CLASSES}),
        Prediction("trash", 0.9, {c: (0.9 if c == "trash" else 0.02) for c in CLASSES}),
    ]
    body = json.dumps(v1_response(p.to_dict() for p in predictions)).encode()
    items = parse_response(body, CLASSES).items
    assert [(i.label, i.score, i.probabilities) for i in items] == [
        (p.label, p.score, p.probabilities) for p in predictions
    ]


def test_servings_binary_v2_answers_are_read_back_by_the_collector() -> None:
    from kserve.protocol.infer_type import InferOutput, InferResponse

    from monitoring.payloads import parse_response

    probabilities = np.full((2, len(CLASSES)), 0.02, dtype=np.float32)
    probabilities[0, 1] = probabilities[1, 5] = 0.9
    outputs = [
        InferOutput("label", [2], "BYTES", data=np.array(["glass", "trash"], dtype=np.object_)),
        InferOutput("score", [2], "FP32", data=np.array([0.8, 0.7], dtype=np.float32)),
        InferOutput(
            "probabilities",
            [2, len(CLASSES)],
            "FP32",
            data=probabilities,
            parameters=classes_parameter(CLASSES),
        ),
    ]
    response = InferResponse("r", "garbage-classifier", outputs, use_binary_outputs=True)
    body, header_length = response.to_rest()
    assert split_leading_json(body)[1] == split_at_header_length(body, str(header_length))[1]
    items = parse_response(body, CLASSES).items
    assert [(i.label, round(i.score, 3)) for i in items] == [("glass", 0.8), ("trash", 0.7)]
    assert items[1].probabilities["trash"] == pytest.approx(0.9)
