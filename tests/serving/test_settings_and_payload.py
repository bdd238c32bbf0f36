"""Settings (defaults, environment, flags, thread budget) and the v2 REST body decoder."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from garbage.core.protocol import ProtocolError, pack_bytes_tensor
from serving.errors import InputRejected, as_rejection
from serving.payload import (
    json_container_budget,
    parse_v1_body,
    parse_v2_body,
    parse_v2_rest,
    quoted,
    v1_images,
    v2_images,
)
from serving.settings import ServingSettings, SettingsError, _cgroup_cpu_quota, thread_budget

NAME = "garbage-classifier"


def test_flags_beat_environment_which_beats_defaults() -> None:
    env = {
        "GARBAGE_SERVE_MAX_BATCH_SIZE": "16",
        "GARBAGE_SERVE_MAX_INSTANCES": "5",
        "GARBAGE_SERVE_ALLOWED_FORMATS": "jpeg, png,webp",
    }
    settings = ServingSettings.from_sources(env, max_instances=7, max_image_pixels=None)
    assert settings.max_batch_size == 16
    assert settings.max_instances == 7
    assert settings.allowed_formats == ("JPEG", "PNG", "WEBP")
    assert settings.max_image_pixels == ServingSettings().max_image_pixels


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"GARBAGE_SERVE_MAX_BATCH_SIZE": "zero"}, {}, "GARBAGE_SERVE_MAX_BATCH_SIZE"),
        ({}, {"max_batch_size": 0}, "max_batch_size"),
        ({}, {"device": "tpu"}, "device"),
        ({}, {"model_name": "bad name/"}, "model_name"),
        ({}, {"batch": 3}, "unknown serving settings: batch"),
    ],
)
def test_invalid_settings_say_which_and_where(env, overrides, message) -> None:
    with pytest.raises(SettingsError, match=message):
        ServingSettings.from_sources(env, **overrides)


def test_thread_budget_divides_the_cpus_between_workers() -> None:
    settings = ServingSettings()
    assert thread_budget(settings, workers=1, cpus=8) == (8, 8)
    assert thread_budget(settings, workers=2, cpus=8) == (4, 4)
    assert thread_budget(settings, workers=1, cpus=2) == (2, 2)
    assert thread_budget(settings, workers=4, cpus=2) == (1, 1)
    assert thread_budget(settings, workers=1, cuda=True, cpus=8) == (1, 8)
    explicit = ServingSettings(intra_op_threads=3, decode_threads=2)
    assert thread_budget(explicit, workers=1, cpus=8) == (3, 2)


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert _cgroup_cpu_quota(tmp_path) == 2.0


def _binary_body(images: list[bytes]) -> tuple[bytes, str]:
    raw = b"".join(struct.pack("<I", len(b)) + b for b in images)
    head = json.dumps(
        {
            "id": "x",
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "label"}],
        }
    ).encode()
    return head + raw, str(len(head))


def test_binary_extension_keeps_raw_image_bytes() -> None:
    images = [b"\xff\xd8\xff first", b"\x89PNG second"]
    body, length = _binary_body(images)
    request = parse_v2_rest(body, length, NAME)
    assert request.id == "x" and request.model_name == NAME
    assert [o.name for o in request.request_outputs] == ["label"]
    assert v2_images(request, ServingSettings()) == images


def test_binary_uint8_tensor_is_read_without_copying_into_lists() -> None:
    pixels = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 4, 5, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ]
        }
    ).encode()
    request = parse_v2_rest(head + pixels.tobytes(), str(len(head)), NAME)
    np.testing.assert_array_equal(v2_images(request, ServingSettings()), pixels)


def _with_tail(head: bytes, tail: bytes, kind: str, message: str) -> list[tuple]:
    """A JSON header followed by binary data, with its Inference-Header-Content-Length."""
    return [(head + tail, str(len(head)), kind, message)]


@pytest.mark.parametrize(
    ("body", "length", "kind", "message"),
    [
        (b'{"inputs": [', None, "malformed_json", "not valid JSON"),
        (b"[1, 2]", None, "bad_request", "v2 inference request"),
        (b'{"inputs": []}', None, "bad_request", "v2 inference request"),
        (
            b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1]}]}',
            None,
            "bad_request",
            "neither 'data' nor",
        ),
        (
            b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": "1", "data": []}]}',
            None,
            "bad_shape",
            "non-negative integers",
        ),
        (
            b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
            b'"data": "x"}]}',
            None,
            "bad_request",
            "'data' must be a list",
        ),
        *(
            _with_tail(
                b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
                b'"parameters": {"binary_data_size": 99}}]}',
                b"abc",
                "bad_request",
                "only 3 bytes remain",
            )
        ),
        *(
            _with_tail(
                b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
                b'"data": ["aGk="]}]}',
                b"xx",
                "bad_request",
                "2 bytes follow the JSON",
            )
        ),
        (b'{"inputs": []}', "ten", "bad_request", "must be an integer"),
        (b'{"inputs": []}', "500", "bad_request", "outside the body"),
        (
            b'{"id": 5, "inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": []}]}',
            None,
            "bad_request",
            '"id" must be a string',
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": []}], '
            b'"outputs": [1]}',
            None,
            "bad_request",
            '"outputs" must be a list',
        ),
    ],
)
def test_v2_rest_decoder_rejects_malformed_bodies(body, length, kind, message) -> None:
    with pytest.raises(InputRejected, match=message) as caught:
        parse_v2_rest(body, length, NAME)
    assert caught.value.kind == kind


def test_protocol_errors_become_rejections_with_the_same_reason_and_message() -> None:
    with pytest.raises(InputRejected) as caught, as_rejection():
        raise ProtocolError("element 2 claims 9 bytes but 1 remain", "bad_tensor_data")
    assert str(caught.value) == "element 2 claims 9 bytes but 1 remain"
    assert caught.value.kind == "bad_tensor_data"
    assert isinstance(caught.value.__cause__, ProtocolError)
    with pytest.raises(InputRejected, match="as it was") as caught, as_rejection():
        raise InputRejected("as it was", "bad_shape")
    assert caught.value.kind == "bad_shape" and caught.value.__cause__ is None


def test_binary_bytes_tensor_with_an_empty_element_keeps_every_element() -> None:
    raw = pack_bytes_tensor([b"", b"\xff\xd8 jpeg", b""])
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    request = parse_v2_rest(head + raw, str(len(head)), NAME)
    assert v2_images(request, ServingSettings()) == [b"", b"\xff\xd8 jpeg", b""]


def test_binary_data_without_a_header_length_is_not_guessed() -> None:
    pixels = np.zeros((1, 1, 1, 3), dtype=np.uint8)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1, 1, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 3},
                }
            ]
        }
    ).encode()
    with pytest.raises(InputRejected, match="not valid JSON") as caught:
        parse_v2_rest(head + pixels.tobytes(), None, NAME)
    assert caught.value.kind == "malformed_json"


def test_body_limit_fits_the_instance_limit_and_never_exceeds_the_payload_limit() -> None:
    small = ServingSettings(max_instances=4, max_image_bytes=3 * 1024, max_payload_bytes=1 << 20)
    assert small.max_body_bytes == 4 * (4 * 1024 + 64) + 64 * 1024
    assert ServingSettings().max_body_bytes == ServingSettings().max_payload_bytes
    assert ServingSettings(max_payload_bytes=4096).max_body_bytes == 4096


def _v2_json(**tensor) -> bytes:
    base = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}
    return json.dumps({"inputs": [{**base, **tensor}]}).encode()


@pytest.mark.parametrize(
    ("tensor", "kind", "message"),
    [
        ({"shape": [True]}, "bad_shape", "got '[true]'"),
        ({"shape": [False, 1]}, "bad_shape", "no booleans"),
        ({"shape": [1.0]}, "bad_shape", "non-negative integers"),
        ({"shape": [-1]}, "bad_shape", "non-negative integers"),
        ({"shape": ["1"]}, "bad_shape", "non-negative integers"),
        ({"shape": [[1]]}, "bad_shape", "non-negative integers"),
        ({"name": 7}, "bad_request", "string 'name' and 'datatype'"),
        ({"datatype": None}, "bad_request", "string 'name' and 'datatype'"),
        ({"parameters": [1]}, "bad_request", "'parameters' must be an object"),
    ],
)
def test_v2_tensor_fields_of_the_wrong_type_are_named(tensor, kind, message) -> None:
    with pytest.raises(InputRejected, match=re.escape(message)) as caught:
        parse_v2_rest(_v2_json(**tensor), None, NAME)
    assert caught.value.kind == kind


def test_client_values_in_messages_are_cut_short() -> None:
    long_name = "x" * 10_000
    with pytest.raises(InputRejected) as caught:
        v2_images(parse_v2_rest(_v2_json(name=long_name), None, NAME), ServingSettings())
    assert caught.value.kind == "bad_tensor_name"
    assert len(str(caught.value)) < 400 and "xxx..." in str(caught.value)
    assert quoted("abc") == "'abc'" and quoted([1, True]) == "'[1,true]'"
    with pytest.raises(InputRejected, match="at most 256 characters"):
        body = json.loads(_v2_json())
        parse_v2_rest(json.dumps({**body, "id": "i" * 300}).encode(), None, NAME)


def test_images_over_the_byte_limit_are_refused_before_decoding() -> None:
    settings = ServingSettings(max_image_bytes=3000)
    big = base64.b64encode(b"\xff" * 3001).decode()
    with pytest.raises(InputRejected, match=r"more than an image of at most 3000 bytes"):
        v1_images({"instances": [{"b64": big + "AAAA"}]}, settings)
    raw = pack_bytes_tensor([b"ok", b"\0" * 3001])
    request = parse_v2_rest(*_binary_tensor("image_bytes", "BYTES", [2], raw), NAME)
    with pytest.raises(InputRejected, match="element 1 of 'image_bytes' is 3001 bytes") as caught:
        v2_images(request, settings)
    assert caught.value.kind == "file_too_large"


def _binary_tensor(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, str]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return head + raw, str(len(head))


@pytest.mark.parametrize(
    ("shape", "kind", "message"),
    [
        ([1, 1, 5000, 3], "aspect_ratio", "aspect ratio of 5000.0:1"),
        ([1, 13000, 13000, 3], "too_large", "over the limit"),
        ([1, 1000, 1000, 3], "file_too_large", "3000000 bytes, over the limit"),
        ([10**12, 1, 1, 3], "too_many_instances", "over the limit of 64"),
    ],
)
def test_pixel_tensors_get_the_image_limits_from_their_shape(shape, kind, message) -> None:
    settings = ServingSettings(max_image_bytes=2 * 1024 * 1024, max_image_side=12_000)
    request = parse_v2_rest(*_binary_tensor("image", "UINT8", shape, b"\0" * 12), NAME)
    with pytest.raises(InputRejected, match=re.escape(message)) as caught:
        v2_images(request, settings)
    assert caught.value.kind == kind


def test_parsed_bodies_carry_their_images_and_request() -> None:
    settings = ServingSettings()
    v1 = parse_v1_body(b'{"instances": [{"b64": "aGk="}]}', settings)
    assert (v1.protocol, v1.inputs, v1.request) == ("v1", [b"hi"], None)
    v2 = parse_v2_body(_v2_json(), None, NAME, settings)
    assert (v2.protocol, v2.inputs) == ("v2", [b"hi"]) and v2.request.model_name == NAME
    with pytest.raises(InputRejected, match="not valid JSON") as caught:
        parse_v1_body(b"[" * 2000, settings)  # deeper than orjson parses: a 400, not a crash
    assert caught.value.kind == "malformed_json"
    assert json_container_budget(settings) == 4 * settings.max_instances + 64


def test_new_limits_are_settings_with_flags() -> None:
    from serving.settings import setting_flags

    names = {flag.name for flag in setting_flags()}
    assert {
        "max_image_bytes",
        "max_image_side",
        "max_aspect_ratio",
        "header_timeout_s",
        "body_timeout_s",
    } <= names
    env = {"GARBAGE_SERVE_MAX_ASPECT_RATIO": "4", "GARBAGE_SERVE_HEADER_TIMEOUT_S": "2.5"}
    settings = ServingSettings.from_sources(env)
    assert (settings.max_aspect_ratio, settings.header_timeout_s) == (4.0, 2.5)
    with pytest.raises(SettingsError, match="max_aspect_ratio"):
        ServingSettings.from_sources({}, max_aspect_ratio=0.5)
