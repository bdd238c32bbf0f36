"""The collector under hostile input, over real HTTP: every mistake a 4xx, no internals, no bloat.

One collector process (the real app under uvicorn, started like ``python -m monitoring collector``
with its credential in the environment) takes a table of malformed, oversized and unauthorised
requests. After each case a good event must still be accepted, and the collector's peak resident
memory while the case ran (sampled with psutil) must stay under :data:`RSS_LIMIT`. The
over-long-field cases run once more against PostgreSQL, which refuses what SQLite would store.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx
import psutil
import pytest
from monitoring_helpers import REQUEST_TYPE, kserve_headers, make_jpeg
from PIL import Image
from support import free_port, wait_for_port

from monitoring.collector import MAX_BODY_BYTES, MAX_FEEDBACK_BYTES, TOKEN_ENV
from monitoring.events import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from monitoring.payloads import MAX_ITEMS, MAX_JSON_CONTAINERS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
TOKEN = "hostile-suite-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The collector's memory limit on the cluster is 1 GiB; a case may not take it near that.
RSS_LIMIT = 768 * 1024 * 1024
#: Words that only internals use: SQL, drivers, URLs of the store, Python tracebacks.
INTERNALS = (
    "select ",
    "insert ",
    "update ",
    "[sql:",
    "[parameters:",
    "sqlalchemy",
    "psycopg",
    "sqlite",
    "postgresql",
    "traceback",
    'file "',
    "background on this error",
    "inference_log",
    "label_history",
)
#: Started like the ``collector`` command: the credential from the environment, checked by the
#: same functions; the class names are given instead of read from a model.
LAUNCHER = """
import sys
import uvicorn
from monitoring.collector import CollectorAuth, TOKEN_ENV, create_app, load_credentials
from monitoring.store import InferenceStore

db, port, classes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
auth = CollectorAuth(feedback=load_credentials(TOKEN_ENV, None))
app = create_app(InferenceStore(db), classes, auth=auth)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""
LOGGED_ID = "logged-1"  # an inference of two images, logged when the collector starts


@dataclass
class Collector:
    """A collector process on loopback."""

    url: str
    port: int
    process: subprocess.Popen
    log: Path
    ids: Iterator[int] = field(default_factory=count)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str
    sent: int = 0  # body bytes the client managed to send (raw-socket cases)
    seconds: float = 0.0


@dataclass(frozen=True)
class Case:
    """One hostile request: how to send it, the statuses allowed, words its answer must hold."""

    name: str
    send: Callable[[Collector], Answer]
    status: tuple[int, ...]
    says: str = ""
    then: Callable[[Collector, Answer], None] | None = None


# --- senders -----------------------------------------------------------------------------------


def _answer(r: httpx.Response) -> Answer:
    return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text)


def post(
    path: str,
    body: bytes | Callable[[], bytes],
    headers: dict[str, str] | None = None,
) -> Callable[[Collector], Answer]:
    def send(c: Collector) -> Answer:
        content = body() if callable(body) else body
        return _answer(httpx.post(c.url + path, content=content, headers=headers, timeout=60))

    return send


def event(
    body: bytes | Callable[[], bytes],
    kind: str = "request",
    content_type: str = "application/json",
    **change: str | None,
) -> Callable[[Collector], Answer]:
    """A binary-mode event as KServe sends it, with headers changed (``Ce_Id=None`` drops one)."""
    headers = kserve_headers("hostile", kind, content_type)
    for key, value in change.items():
        name = key.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return post("/events", body, headers)


def structured(obj: object, batch: bool = False) -> Callable[[Collector], Answer]:
    content_type = BATCH_CONTENT_TYPE if batch else STRUCTURED_CONTENT_TYPE
    return post("/events", json.dumps(obj).encode(), {"Content-Type": content_type})


def feedback(
    body: object | Callable[[], bytes], headers: dict[str, str] | None = None
) -> Callable[[Collector], Answer]:
    content = body if callable(body) else json.dumps(body).encode()
    return post("/feedback", content, {"Content-Type": "application/json", **(headers or AUTH)})


def raw(head: bytes, chunks: Callable[[], Iterator[bytes]] | None = None) -> Callable:
    """Send ``head`` then ``chunks`` over a socket, stopping when the collector answers."""

    def send(c: Collector) -> Answer:
        sent, started = 0, time.monotonic()
        with socket.create_connection(("127.0.0.1", c.port), timeout=30) as s:
            s.sendall(head)
            for chunk in chunks() if chunks else ():
                try:
                    s.sendall(chunk)
                except OSError:  # the collector closed the connection
                    break
                sent += len(chunk)
                s.settimeout(0)
                try:
                    early = s.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    early = b""
                except OSError:
                    break
                finally:
                    s.settimeout(30)
                if early:
                    break
            data = b""
            while b"\r\n\r\n" not in data:
                more = s.recv(65536)
                if not more:
                    break
                data += more
            head_part, _, rest = data.partition(b"\r\n\r\n")
            lines = head_part.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", len(rest)))
            while len(rest) < length:
                more = s.recv(65536)
                if not more:
                    break
                rest += more
        text = rest.decode("utf-8", "replace")
        return Answer(int(lines[0].split()[1]), headers, text, sent, time.monotonic() - started)

    return send


def _head(content_length: str | None = None, chunked: bool = False) -> bytes:
    lines = ["POST /events HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in kserve_headers("raw-1", "request").items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunks(total: int, size: int = 1024 * 1024) -> Callable[[], Iterator[bytes]]:
    def generate() -> Iterator[bytes]:
        piece = b'{"instances": [' + b" " * (size - 15)
        for _ in range(total // size):
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            piece = b" " * size
        yield b"0\r\n\r\n"

    return generate


# --- payloads ----------------------------------------------------------------------------------


def at_once(send: Callable[[Collector], Answer], times: int) -> Callable[[Collector], Answer]:
    """``send`` from ``times`` threads at once; the worst answer (highest status) counts."""

    def send_all(c: Collector) -> Answer:
        answers: list[Answer] = []
        threads = [threading.Thread(target=lambda: answers.append(send(c))) for _ in range(times)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == times
        return max(answers, key=lambda a: a.status)

    return send_all


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1(*instances: object) -> bytes:
    return json.dumps({"instances": list(instances)}).encode()


def v2(*inputs: object) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def image(fmt: str = "PNG", size: tuple[int, int] = (1, 1)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header(width: int, height: int, rows: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with ``rows`` (zlib) as data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", rows or zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def zero_png(width: int, height: int) -> bytes:
    """A real, decodable all-black PNG: a few hundred KB that decode to ``width*height*3`` bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_header(width, height, data)


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def prediction(**fields: object) -> bytes:
    return json.dumps({"predictions": [{"label": "glass", "score": 0.9, **fields}]}).encode()


def v2_out(*outputs: object, **extra: object) -> bytes:
    return json.dumps({"outputs": list(outputs), **extra}).encode()


def ce(**attributes: object) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": "s-1",
        "type": REQUEST_TYPE,
        "source": "/broker",
        "datacontenttype": "application/json",
        "data": {"instances": [{"image_bytes": {"b64": _b64(make_jpeg((10, 200, 10)))}}]},
        **attributes,
    }


BIG_INT = "9" * 5000


def _unreadable(expected: int) -> Callable[[Collector, Answer], None]:
    def check(_: Collector, answer: Answer) -> None:
        [summary] = json.loads(answer.text)["events"]
        assert summary["unreadable"] == expected, summary

    return check


def _not_stored(inference_id: str) -> Callable[[Collector, Answer], None]:
    def check(c: Collector, _: Answer) -> None:
        r = httpx.post(
            f"{c.url}/feedback", json={"inference_id": inference_id, "label": "glass"}, headers=AUTH
        )
        assert r.status_code == 404, r.text

    return check


def _closed_early(c: Collector, answer: Answer) -> None:
    assert answer.headers.get("connection") == "close"
    assert answer.sent < 2 * MAX_BODY_BYTES, f"the collector read {answer.sent} bytes first"
    assert answer.seconds < 10, f"the 413 came after {answer.seconds:.1f} s"


def _challenge(c: Collector, answer: Answer) -> None:
    assert answer.headers.get("www-authenticate", "").startswith("Bearer")


GOOD_JPEG = make_jpeg((60, 160, 90), 1)

CASES = [
    # CloudEvents headers
    Case(
        "plain-json-post",
        post("/events", b"{}", {"Content-Type": "application/json"}),
        (400,),
        "not a CloudEvent",
    ),
    Case("no-ce-id", event(v1(), Ce_Id=None), (400,), "ce-id"),
    Case("blank-id", structured(ce(id="   ")), (400,), "blank"),
    Case("no-ce-source", event(v1(), Ce_Source=None), (400,), "ce-source"),
    Case("specversion-0.3", event(v1(), Ce_Specversion="0.3"), (400,), "specversion"),
    Case(
        "unknown-ce-type",
        event(v1(), Ce_Type="org.example.other"),
        (400,),
        "unsupported event type",
    ),
    Case("ce-time-garbage", event(v1(), Ce_Time="yesterday"), (400,), "RFC 3339"),
    Case(
        "ce-time-year-1-with-offset",
        event(v1(), Ce_Time="0001-01-01T00:00:00+01:00"),
        (400,),
        "ce-time",
    ),
    Case(
        "ce-time-year-9999-with-offset",
        event(v1(), Ce_Time="9999-12-31T23:59:59-01:00"),
        (400,),
        "ce-time",
    ),
    Case("ce-time-1970", event(v1(), Ce_Time="1970-01-01T00:00:00Z"), (400,), "outside"),
    Case("ce-time-far-future", event(v1(), Ce_Time="2999-01-01T00:00:00Z"), (400,), "outside"),
    Case("ce-time-8kb", event(v1(), Ce_Time="2026-" + "1" * 8000), (400,), "ce-time"),
    Case("ce-id-300-chars", event(v1(), Ce_Id="i" * 300), (400,), "ce-id is 300 characters"),
    Case("ce-source-600-chars", event(v1(), Ce_Source="s" * 600), (400,), "ce-source"),
    Case(
        "ce-isvc-300-chars",
        event(v1(), Ce_Inferenceservicename="x" * 300),
        (400,),
        "ce-inferenceservicename",
    ),
    Case("ce-component-100-chars", event(v1(), Ce_Component="c" * 100), (400,), "ce-component"),
    Case("ce-endpoint-100-chars", event(v1(), Ce_Endpoint="e" * 100), (400,), "ce-endpoint"),
    Case("ce-modelid-300-chars", event(v1(), Ce_Modelid="m" * 300), (400,), "model id"),
    Case("ce-metadata-deep-json", event(v1(), Ce_Metadata=deep(5000).decode()), (202,)),
    Case("ce-metadata-not-json", event(v1(), Ce_Metadata="{nope"), (202,)),
    # bodies: declared and streamed sizes
    Case("content-length-not-a-number", raw(_head(content_length="12abc")), (400,)),
    Case(
        "content-length-10-gb-no-body",
        raw(_head(content_length=str(10 * 1024**3))),
        (413,),
        "at most",
    ),
    Case(
        "chunked-body-past-the-limit",
        raw(_head(chunked=True), _chunks(8 * MAX_BODY_BYTES)),
        (413,),
        "at most",
        _closed_early,
    ),
    # request payloads
    Case("empty-body", event(b""), (400,), "empty"),
    Case("not-json", event(b"\xff\xfe not json"), (400,), "not JSON"),
    Case("json-array-top-level", event(b"[1, 2]"), (400,), "JSON object"),
    Case("deep-json-100k", event(lambda: deep(100_000)), (400,), "nested more than"),
    Case(
        "deep-json-40-in-instances",
        event(b'{"instances": ' + deep(40) + b"}"),
        (400,),
        "nested more than",
    ),
    Case(
        "million-empty-objects",
        event(lambda: b'{"instances": [' + b"{}," * (MAX_JSON_CONTAINERS + 10) + b"{}]}"),
        (400, 413),
        "objects and arrays",
    ),
    Case(
        "too-many-instances",
        event(lambda: v1(*["AAAA"] * (MAX_ITEMS + 1))),
        (400,),
        f"more than {MAX_ITEMS}",
    ),
    Case("instances-not-a-list", event(b'{"instances": {"a": 1}}'), (400,), "must be a list"),
    Case("huge-integer", event(('{"instances": [' + BIG_INT + "]}").encode()), (400,), "JSON"),
    Case("v2-inputs-not-a-list", event(b'{"inputs": "image"}'), (400,), "non-empty list"),
    Case("v2-input-not-an-object", event(v2("image")), (400,), "must be an object"),
    Case(
        "v2-shape-a-string",
        event(v2({"name": "image", "shape": "abc", "datatype": "UINT8", "data": [1]})),
        (400,),
        "shape",
    ),
    Case(
        "v2-shape-of-objects",
        event(v2({"name": "image", "shape": [{}], "datatype": "UINT8", "data": [1]})),
        (400,),
        "shape",
    ),
    Case(
        "v2-shape-of-booleans",
        event(
            v2({"name": "image", "shape": [True, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 3]})
        ),
        (400,),
        "shape",
    ),
    Case(
        "v2-shape-beyond-int64",
        event(v2({"name": "image", "shape": [2**70, 1, 1, 3], "datatype": "UINT8", "data": [1]})),
        (400,),
        f"more than {MAX_ITEMS}",
    ),
    Case(
        "v2-shape-huge-image",
        event(
            v2(
                {
                    "name": "image",
                    "shape": [1, 2**40, 2**40, 3],
                    "datatype": "UINT8",
                    "data": [1, 2, 3],
                }
            )
        ),
        (400,),
        "values for shape",
    ),
    Case(
        "v2-datatype-a-number",
        event(v2({"name": "image", "shape": [1], "datatype": 5, "data": ["x"]})),
        (400,),
        "no BYTES or UINT8",
    ),
    Case(
        "v2-bytes-of-objects",
        event(
            v2({"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": [{"a": 1}, [1]]})
        ),
        (202,),
        "",
        _unreadable(2),
    ),
    Case(
        "v2-binary-size-past-the-body",
        event(
            v2(
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 10**12},
                }
            )
        ),
        (400,),
        "binary_data_size",
    ),
    Case(
        "v2-binary-size-negative",
        event(
            v2(
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": -5},
                }
            )
        ),
        (400,),
        "binary_data_size",
    ),
    Case(
        "v2-bytes-million-elements",
        event(
            lambda: v2(
                {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [""] * 1_000_000}
            )
        ),
        (400,),
        f"more than {MAX_ITEMS}",
    ),
    Case("pixels-nan", event(b'{"instances": [[[[NaN, 1, 2]]]]}'), (202,), "", _unreadable(1)),
    Case("pixels-out-of-range", event(v1([[[300, 1, 2]]])), (202,), "", _unreadable(1)),
    Case("v1-bad-base64", event(v1({"image_bytes": {"b64": "%%%"}})), (202,), "", _unreadable(1)),
    # response payloads
    Case(
        "probability-a-string",
        event(prediction(probabilities={"glass": "x"}), kind="response"),
        (400,),
        "probability",
    ),
    Case("score-an-object", event(prediction(score={"a": 1}), kind="response"), (400,), "score"),
    Case(
        "score-nan",
        event(b'{"predictions": [{"label": "glass", "score": NaN}]}', kind="response"),
        (400,),
        "finite",
    ),
    Case(
        "score-huge-integer",
        event(
            ('{"predictions": [{"label": "glass", "score": 1' + "0" * 400 + "}]}").encode(),
            kind="response",
        ),
        (400,),
        "score",
    ),
    Case(
        "v2-output-data-strings",
        event(
            v2_out({"name": "score", "shape": [1], "datatype": "FP32", "data": ["high"]}),
            kind="response",
        ),
        (400,),
        "numbers",
    ),
    Case(
        "v2-output-shape-a-string",
        event(
            v2_out({"name": "probabilities", "shape": "2x6", "datatype": "FP32", "data": [0.1]}),
            kind="response",
        ),
        (400,),
        "shape",
    ),
    Case(
        "v2-output-int-label-infinite",
        event(
            b'{"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", '
            b'"data": [Infinity]}]}',
            kind="response",
        ),
        (400,),
        "finite",
    ),
    Case(
        "predicted-label-300-chars",
        event(prediction(label="l" * 300), kind="response"),
        (400,),
        "predicted label",
    ),
    Case(
        "model-name-300-chars",
        event(
            v2_out(
                {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["glass"]},
                model_name="n" * 300,
            ),
            kind="response",
        ),
        (400,),
        "model id",
    ),
    Case(
        "model-name-an-object",
        event(
            v2_out(
                {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["glass"]},
                model_name={"a": 1},
            ),
            kind="response",
        ),
        (400,),
        "model_name",
    ),
    Case(
        "too-many-predictions",
        event(
            lambda: json.dumps({"predictions": ["glass"] * (MAX_ITEMS + 1)}).encode(),
            kind="response",
        ),
        (400,),
        f"more than {MAX_ITEMS}",
    ),
    # structured and batched events
    Case(
        "structured-not-json",
        post("/events", b"{nope", {"Content-Type": STRUCTURED_CONTENT_TYPE}),
        (400,),
        "not valid JSON",
    ),
    Case("structured-an-array", structured([ce()]), (400,), "JSON object"),
    Case("structured-id-a-number", structured(ce(id=12345)), (400,), "must be strings"),
    Case("structured-id-an-object", structured(ce(id={"a": 1})), (400,), "must be strings"),
    Case("structured-time-a-number", structured(ce(time=1700000000)), (400,), "must be strings"),
    Case(
        "structured-no-type",
        structured({k: v for k, v in ce().items() if k != "type"}),
        (400,),
        "type",
    ),
    Case(
        "structured-bad-base64",
        structured(
            {**{k: v for k, v in ce().items() if k != "data"}, "data_base64": "not base64!"}
        ),
        (400,),
        "base64",
    ),
    Case(
        "structured-lone-surrogate-id",
        post(
            "/events",
            b'{"specversion": "1.0", "id": "a\\ud800", "type": "'
            + REQUEST_TYPE.encode()
            + b'", "source": "/x", "data": {"instances": []}}',
            {"Content-Type": STRUCTURED_CONTENT_TYPE},
        ),
        (400,),
        "Unicode",
    ),
    Case("structured-nul-in-source", structured(ce(source="/x\u0000y")), (400,), "NUL"),
    Case(
        "structured-deep-data",
        post(
            "/events",
            b'{"specversion": "1.0", "id": "d", "type": "t", "source": "/x", "data": '
            + deep(50)
            + b"}",
            {"Content-Type": STRUCTURED_CONTENT_TYPE},
        ),
        (400,),
        "nested more than",
    ),
    Case("batch-empty", structured([], batch=True), (400,), "non-empty"),
    Case(
        "batch-too-many-events",
        structured([ce(id=f"b-{i}") for i in range(300)], batch=True),
        (400,),
        "at most",
    ),
    Case(
        "batch-one-bad-event",
        structured([ce(id="batch-good"), ce(id="batch-bad", time="never")], batch=True),
        (400,),
        "ce-time",
        _not_stored("batch-good"),
    ),
    Case("batch-of-strings", structured(["a", "b"], batch=True), (400,), "JSON object"),
    # images: the rules serving applies
    Case(
        "tiny-png-1x1",
        event(v1({"image_bytes": {"b64": _b64(image("PNG", (1, 1)))}})),
        (202,),
        "",
        _unreadable(0),
    ),
    Case(
        "tiny-jpeg-2x5",
        event(v1({"image_bytes": {"b64": _b64(image("JPEG", (2, 5)))}})),
        (202,),
        "",
        _unreadable(0),
    ),
    Case("tiny-pixels-1x1", event(v1([[[1, 2, 3]]])), (202,), "", _unreadable(0)),
    Case("pixels-zero-width", event(v1({"image": [[], []]})), (202,), "", _unreadable(1)),
    Case(
        "png-header-100k-square",
        event(v1({"image_bytes": {"b64": _b64(png_header(100_000, 100_000))}})),
        (202,),
        "",
        _unreadable(1),
    ),
    Case(  # 36 megapixels, within serving's limits: decoded, one at a time
        "png-6000-square-bombs-3-at-once",
        at_once(event(lambda: v1({"image_bytes": {"b64": _b64(zero_png(6000, 6000))}})), 3),
        (202,),
    ),
    Case(
        "png-40m-by-1-strip",
        event(lambda: v1({"image_bytes": {"b64": _b64(zero_png(40_000_000, 1))}})),
        (202,),
    ),
    Case(
        "truncated-jpeg",
        event(v1({"image_bytes": {"b64": _b64(GOOD_JPEG[:200])}})),
        (202,),
        "",
        _unreadable(1),
    ),
    Case(
        "gif-not-allowed",
        event(v1({"image_bytes": {"b64": _b64(image("GIF", (8, 8)))}})),
        (202,),
        "",
        _unreadable(1),
    ),
    Case(
        "raw-image-body-garbage",
        event(b"\x89PNG garbage", content_type="image/png"),
        (202,),
        "",
        _unreadable(1),
    ),
    # feedback: credentials
    Case(
        "feedback-no-authorization",
        feedback({"inference_id": LOGGED_ID, "label": "glass"}, headers={"X-Nothing": "1"}),
        (401,),
        "Bearer",
        _challenge,
    ),
    Case(
        "feedback-basic-auth",
        feedback(
            {"inference_id": LOGGED_ID, "label": "glass"},
            headers={"Authorization": "Basic dXNlcjpwYXNz"},
        ),
        (401,),
        "Bearer",
        _challenge,
    ),
    Case(
        "feedback-bearer-without-token",
        feedback(
            {"inference_id": LOGGED_ID, "label": "glass"}, headers={"Authorization": "Bearer"}
        ),
        (401,),
        "Bearer",
        _challenge,
    ),
    Case(
        "feedback-wrong-token",
        feedback(
            {"inference_id": LOGGED_ID, "label": "glass"},
            headers={"Authorization": "Bearer " + "x" * 40},
        ),
        (403,),
        "not accepted",
    ),
    Case(
        "feedback-token-latin1",
        feedback(
            {"inference_id": LOGGED_ID, "label": "glass"},
            headers={"Authorization": b"Bearer caf\xe9-0123456789abcdef"},
        ),
        (401,),
        "Bearer",
    ),
    # feedback: values
    Case(
        "feedback-item-over-2-63",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "item": 2**63 + 1}),
        (422,),
        "item",
    ),
    Case(
        "feedback-item-5000-digits",
        feedback(
            lambda: ('{"inference_id": "x", "label": "glass", "item": ' + BIG_INT + "}").encode()
        ),
        (400,),
        "JSON",
    ),
    Case(
        "feedback-item-negative",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "item": -1}),
        (422,),
        "item",
    ),
    Case(
        "feedback-item-a-string",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "item": "0"}),
        (422,),
        "item",
    ),
    Case(
        "feedback-item-a-float",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "item": 1.5}),
        (422,),
        "item",
    ),
    Case(
        "feedback-item-true",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "item": True}),
        (422,),
        "item",
    ),
    Case(
        "feedback-item-past-the-images",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "item": 5}),
        (422,),
        "0..1",
    ),
    Case(
        "feedback-unknown-label",
        feedback({"inference_id": LOGGED_ID, "label": "banana"}),
        (422,),
        "unknown labels",
    ),
    Case(
        "feedback-label-10k-chars",
        feedback({"inference_id": LOGGED_ID, "label": "g" * 10_000}),
        (422,),
        "label",
    ),
    Case(
        "feedback-id-300-chars",
        feedback({"inference_id": "i" * 300, "label": "glass"}),
        (422,),
        "inference_id",
    ),
    Case(
        "feedback-id-nul", feedback({"inference_id": "a\u0000b", "label": "glass"}), (422,), "NUL"
    ),
    Case(
        "feedback-id-lone-surrogate",
        feedback(lambda: b'{"inference_id": "a\\udc80", "label": "glass"}'),
        (422,),
        "unicode string",
    ),
    Case(
        "feedback-unknown-id",
        feedback({"inference_id": "never-logged", "label": "glass"}),
        (404,),
        "no logged prediction",
    ),
    Case("feedback-not-json", feedback(lambda: b"label=glass"), (400,), "not valid JSON"),
    Case("feedback-deep-json", feedback(lambda: deep(10_000)), (400,), "nested more than"),
    Case(
        "feedback-over-1-mib",
        feedback(lambda: b"[" + b" " * MAX_FEEDBACK_BYTES + b"]"),
        (413,),
        "at most",
    ),
    Case(
        "feedback-1001-entries",
        feedback([{"inference_id": LOGGED_ID, "label": "glass"}] * 1001),
        (422,),
        "at most 1000",
    ),
    Case("feedback-empty-list", feedback([]), (422,), "empty"),
    Case(
        "feedback-extra-field",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "comment": "x"}),
        (422,),
        "comment",
    ),
    Case("feedback-entry-a-string", feedback(["glass"]), (422,), "entry 0"),
    Case(
        "feedback-unknown-selection",
        feedback({"inference_id": LOGGED_ID, "label": "glass", "selection": "hard"}),
        (422,),
        "selection",
    ),
    # other routes
    Case(
        "accuracy-window-overflow",
        lambda c: _answer(httpx.get(f"{c.url}/accuracy", params={"window": "9" * 25 + "d"})),
        (422,),
        "window",
    ),
    Case(
        "accuracy-window-5k-chars",
        lambda c: _answer(httpx.get(f"{c.url}/accuracy", params={"window": "1" * 5000})),
        (422,),
        "window",
    ),
    Case("events-get", lambda c: _answer(httpx.get(f"{c.url}/events")), (405,)),
]

#: The over-long and unstorable fields, again on PostgreSQL (VARCHAR(n) and text refuse them).
POSTGRES_CASE_NAMES = {
    "ce-id-300-chars",
    "ce-source-600-chars",
    "ce-isvc-300-chars",
    "ce-component-100-chars",
    "ce-modelid-300-chars",
    "predicted-label-300-chars",
    "model-name-300-chars",
    "structured-lone-surrogate-id",
    "structured-nul-in-source",
    "feedback-id-300-chars",
    "feedback-id-nul",
    "feedback-id-lone-surrogate",
    "feedback-item-over-2-63",
}
POSTGRES_CASES = [c for c in CASES if c.name in POSTGRES_CASE_NAMES]


def _start(db: str, tmp_path: Path) -> Iterator[Collector]:
    port = free_port()
    log = tmp_path / "collector.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, db, str(port), ",".join(CLASSES)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**_environ(), TOKEN_ENV: f"hostile:{TOKEN}"},
        )
    collector = Collector(f"http://127.0.0.1:{port}", port, process, log)
    try:
        wait_for_port(port, timeout=60)
        _log_inference(collector, LOGGED_ID, [GOOD_JPEG, GOOD_JPEG])
        yield collector
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GARBAGE_COLLECTOR_")}


def _log_inference(c: Collector, inference_id: str, images: list[bytes]) -> None:
    body = v1(*({"image_bytes": {"b64": _b64(i)}} for i in images))
    r = httpx.post(f"{c.url}/events", content=body, headers=kserve_headers(inference_id, "request"))
    assert r.status_code == 202 and r.json()["events"][0]["unreadable"] == 0, r.text
    labels = json.dumps({"predictions": ["glass"] * len(images)}).encode()
    r = httpx.post(
        f"{c.url}/events", content=labels, headers=kserve_headers(inference_id, "response")
    )
    assert r.status_code == 202, r.text


@pytest.fixture(scope="module")
def sqlite_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    tmp = tmp_path_factory.mktemp("hostile-sqlite")
    yield from _start(str(tmp / "inferences.db"), tmp)


@pytest.fixture(scope="module")
def postgres_collector(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Collector]:
    yield from _start(postgres_url, tmp_path_factory.mktemp("hostile-postgres"))


class PeakRss:
    """The largest resident set size of a process while the ``with`` block runs."""

    def __init__(self, process: psutil.Process, interval: float = 0.01) -> None:
        self.process, self.interval = process, interval
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _run(case: Case, collector: Collector) -> None:
    assert collector.process.poll() is None, collector.log.read_text()
    with PeakRss(psutil.Process(collector.process.pid)) as rss:
        answer = case.send(collector)
    shown = f"{case.name}: {answer.status} {answer.text[:500]}"
    assert answer.status < 500, shown
    assert answer.status in case.status, shown
    lowered = answer.text.lower()
    leaked = [word for word in INTERNALS if word in lowered]
    assert not leaked, f"{shown} (internals: {leaked})"
    assert case.says in answer.text, shown
    if case.then:
        case.then(collector, answer)
    # The collector still works, and the case did not take its memory near the pod's limit.
    good = f"good-{next(collector.ids)}"
    r = httpx.post(
        f"{collector.url}/events",
        content=v1({"image_bytes": {"b64": _b64(GOOD_JPEG)}}),
        headers=kserve_headers(good, "request"),
        timeout=60,
    )
    assert r.status_code == 202 and r.json()["events"][0]["unreadable"] == 0, r.text
    assert rss.peak < RSS_LIMIT, f"{case.name}: peak RSS {rss.peak / 2**20:.0f} MiB"
    print(f"{case.name}: {answer.status}, sent {answer.sent}, peak RSS {rss.peak / 2**20:.0f} MiB")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_a_4xx_and_leaves_the_collector_working(
    case: Case, sqlite_collector: Collector
) -> None:
    _run(case, sqlite_collector)


@pytest.mark.parametrize("case", POSTGRES_CASES, ids=[c.name for c in POSTGRES_CASES])
def test_unstorable_fields_get_a_4xx_on_postgresql_too(
    case: Case, postgres_collector: Collector
) -> None:
    _run(case, postgres_collector)


def test_the_tables_hold_the_cases_they_name() -> None:
    assert len(CASES) >= 50 and len({c.name for c in CASES}) == len(CASES)
    assert {c.name for c in POSTGRES_CASES} == POSTGRES_CASE_NAMES
