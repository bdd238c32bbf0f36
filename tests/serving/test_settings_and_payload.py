"""Settings (defaults, environment, flags, thread budget) and the v2 REST body decoder."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from garbage.core.protocol import ProtocolError, pack_bytes_tensor
from serving.errors import InputRejected, as_rejection
from serving.payload import parse_v2_rest, v2_images
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
