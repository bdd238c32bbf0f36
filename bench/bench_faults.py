"""Fault benchmark: what the serving and logging path loses, repeats or answers 5xx under faults.

    .venv/bin/python bench/bench_faults.py            # make bench-faults; about 5 minutes

Every process is the real one, on 127.0.0.1: the model server (``garbage serve --logger-url``,
its payload logger spilling to a folder), the collector (``python -m monitoring collector``
on SQLite, with a feedback token), a load generator at a fixed rate (1 JPEG per request, each
with its own ``x-request-id``, which becomes the events' ``ce-id``). The collector's store is
the ground truth: an event is *stored* when the row of its ``ce-id`` has its request (features)
or its response (prediction) part; *acknowledged* events are the two events of every request
the server answered 200; *lost* = acknowledged and not stored once the faults are over and the
server has stopped cleanly. The collector runs with an observer in front of its app that notes
every event it accepts (2xx), so *duplicates* are deliveries the store absorbed (it keeps one
row per ``(ce-id, item)``).

Faults:

1. ``collector-outage``: the collector stopped for 30 s under 30 requests/s, then restarted;
2. ``collector-kill-9``: the collector killed (SIGKILL) under load and restarted at once;
3. ``server-kill-9``: the model server killed under load and restarted on the same spill
   folder (what it held in memory is lost: the figure says how much);
4. ``sink-never-answers``: the logger's URL accepts connections and never answers; then the
   server is stopped and started again against the real collector, and its spill drains;

and three tables: client mistakes (malformed requests to the server and the collector: any 5xx
is a failure), hostile images (the peak RSS of the server for one accepted image of each shape,
the high-water mark reset before each), and unauthenticated writes (feedback without a token,
KServe's model-repository routes). Targets: 0 x 5xx for client mistakes; 0 acknowledged events
lost across the collector outage at 30 requests/s; peak server RSS under 1 GB for any single
accepted image; unauthenticated writes refused. Writes ``bench/results/faults.json`` and
``bench/results/faults.md``. The fault tests (tests/monitoring/test_faults.py) run the same
scenarios at a smaller scale.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEV_ARCHIVE = REPO.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
RESULTS = REPO / "bench" / "results"
MODEL_NAME = "garbage-classifier"
PREDICT = f"/v1/models/{MODEL_NAME}:predict"
TOKEN = "bench-feedback-token-0123456789"
RSS_LIMIT_MB = 1024
OUTAGE_RATE = 30.0
OUTAGE_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers 200 (``process`` still running), or raise with what happened."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.1)


# -- the collector, with an observer of what it accepts ---------------------------------------


class DeliveryRecorder:
    """ASGI middleware: notes ``ce-id`` and type of every event ``/events`` answers 2xx to."""

    def __init__(self, app: Any, path: Path) -> None:
        self.app = app
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") != "/events":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        note = f"{headers.get('ce-id', '')}\t{headers.get('ce-type', '').rsplit('.', 1)[-1]}\n"

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                os.write(self.fd, note.encode())  # one write: a line is never torn
            await send(message)

        await self.app(scope, receive, watch)


def run_collector(spec: dict[str, Any]) -> None:
    """``python -m monitoring collector`` with :class:`DeliveryRecorder` in front of its app."""
    import uvicorn

    from monitoring.cli import build_app

    run = uvicorn.run

    def observed(app: Any, **options: Any) -> None:
        run(DeliveryRecorder(app, Path(spec["deliveries"])), **options)

    uvicorn.run = observed  # the command imports uvicorn and calls uvicorn.run(create_app(...))
    build_app()(
        [
            "collector",
            "--host",
            "127.0.0.1",
            "--port",
            str(spec["port"]),
            "--db",
            spec["db"],
            "--model",
            spec["model"],
            "--log-level",
            "warning",
        ],
        prog_name="collector",
    )


@dataclass
class CollectorProcess:
    """The real collector in its own process; stop, kill and restart it on the same port."""

    work: Path
    model_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.work / "inferences.db"

    @property
    def deliveries_path(self) -> Path:
        return self.work / "deliveries.tsv"

    def start(self) -> None:
        spec = {
            "port": self.port,
            "db": str(self.db),
            "model": str(self.model_dir),
            "deliveries": str(self.deliveries_path),
        }
        env = {**os.environ, "GARBAGE_COLLECTOR_TOKEN": f"bench:{TOKEN}"}
        env.pop("GARBAGE_COLLECTOR_EVENTS_TOKEN", None)
        with (self.work / "collector.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--collector", json.dumps(spec)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.url}/healthz", 60, self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stored(self) -> dict[str, set[str]]:
        """``{ce-id: {"request", "response"}}``: which events of each inference are stored."""
        from monitoring.store import InferenceStore

        store = InferenceStore(str(self.db))
        try:
            rows = store.load_window(columns=["inference_id", "request_time", "response_time"])
        finally:
            store.close()
        found: dict[str, set[str]] = collections.defaultdict(set)
        for row in rows.itertuples():
            if row.request_time is not None and row.request_time == row.request_time:
                found[row.inference_id].add("request")
            if row.response_time is not None and row.response_time == row.response_time:
                found[row.inference_id].add("response")
        return found

    def deliveries(self) -> collections.Counter[tuple[str, str]]:
        """How often the collector accepted each ``(ce-id, type)``."""
        if not self.deliveries_path.is_file():
            return collections.Counter()
        lines = self.deliveries_path.read_text().splitlines()
        return collections.Counter(tuple(line.split("\t", 1)) for line in lines if "\t" in line)


# -- the model server ---------------------------------------------------------------------------


def process_memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of ``pid`` in MB, from /proc (0, 0 once it is gone)."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak_memory(pid: int) -> bool:
    """Reset ``pid``'s peak RSS (VmHWM) to its current RSS: Linux ``clear_refs`` 5."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class ServerProcess:
    """``garbage serve --logger-url`` in its own process, its peak RSS tracked across restarts."""

    work: Path
    model_dir: Path
    logger_url: str
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    peak_rss_mb: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spill_dir(self) -> Path:
        return self.work / "spill"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--model",
            str(self.model_dir),
            "--http-port",
            str(self.port),
            "--no-grpc",
            "--logger-url",
            self.logger_url,
            "--logger-spill-dir",
            str(self.spill_dir),
            *self.extra,
        ]
        with (self.work / "server.log").open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/v2/models/{MODEL_NAME}/ready", 120, self.process)

    def sample(self) -> None:
        """Note the peak RSS and the payload logger's series now (while it runs)."""
        import httpx

        if self.process is None or self.process.poll() is not None:
            return
        self.peak_rss_mb = max(self.peak_rss_mb, process_memory(self.process.pid)[1])
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"{self.url}/metrics", timeout=2).text
            for line in text.splitlines():
                if line.startswith(("garbage_payload_events_total{", "garbage_payload_queue_")):
                    name, value = line.rsplit(" ", 1)
                    self.metrics[name] = float(value)
                    if "queue_" in name:
                        peak = f"peak {name}"
                        self.metrics[peak] = max(self.metrics.get(peak, 0.0), float(value))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.sample()
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def sampling(server: ServerProcess, every: float = 0.25) -> Iterator[None]:
    """Sample the server's memory and metrics in a thread while the block runs."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            server.sample()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class SilentSink:
    """A TCP port that accepts connections, reads what arrives and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/events"

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.closed.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = self.listener.accept()
                connection.setblocking(False)
                self.connections.append(connection)
            for connection in list(self.connections):
                with contextlib.suppress(BlockingIOError, OSError):
                    connection.recv(1 << 16)

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        for connection in self.connections:
            connection.close()
        self.listener.close()


# -- load -----------------------------------------------------------------------------------------


def load_images(count: int = 64) -> list[bytes]:
    """JPEGs from the development archive, or generated ones without it."""
    if DEV_ARCHIVE.is_file():
        with tarfile.open(DEV_ARCHIVE) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")),
                key=lambda m: m.name,
            )
            step = max(1, len(members) // count)
            files = [tar.extractfile(m) for m in members[::step][:count]]
            return [f.read() for f in files if f is not None]
    return [encode(gradient(112, 84, seed=i), "JPEG") for i in range(count)]


def gradient(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Any:
    """A smooth ``width`` x ``height`` image (it compresses well), in PIL ``mode``."""
    import numpy as np
    from PIL import Image

    x = np.arange(width, dtype=np.uint32)[None, :]
    y = np.arange(height, dtype=np.uint32)[:, None]
    base = (x // 8 + y // 8 + seed * 37) % 256
    if mode == "I;16":
        return Image.fromarray((base * 257).astype(np.uint16))
    rgb = np.stack([base, (base * 3) % 256, 255 - base], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb)
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Any, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def v1_body(images: list[bytes]) -> bytes:
    return json.dumps(
        {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in images]}
    ).encode()


@dataclass
class Sent:
    """One request of the load: its id, when it was answered, and how."""

    request_id: str
    sent_at: float
    answered_at: float = 0.0
    status: int | None = None  # None: no HTTP answer (refused, reset, timed out)
    error: str = ""


async def drive(
    server: ServerProcess,
    rate: float,
    prefix: str,
    images: list[bytes],
    *,
    seconds: float | None = None,
    until: asyncio.Event | None = None,
) -> list[Sent]:
    """``rate`` requests/s for ``seconds`` or ``until`` it is set (each started on schedule,
    whatever happens to the others)."""
    import httpx

    sent: list[Sent] = []
    bodies = [v1_body([image]) for image in images]
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:

        async def one(i: int) -> None:
            record = Sent(f"{prefix}-{i}", time.time())
            sent.append(record)
            try:
                answer = await client.post(
                    server.url + PREDICT,
                    content=bodies[i % len(bodies)],
                    headers={"Content-Type": "application/json", "x-request-id": record.request_id},
                )
                record.status = answer.status_code
            except httpx.HTTPError as e:
                record.error = type(e).__name__
            record.answered_at = time.time()

        start = loop.time()
        tasks = []
        i = 0
        while (seconds is None or i < rate * seconds) and not (until and until.is_set()):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        await asyncio.gather(*tasks)
    return sent


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def settle(collector: CollectorProcess, ids: set[str], timeout: float) -> None:
    """Wait until every event of ``ids`` is stored, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = await asyncio.to_thread(collector.stored)
        if all(stored.get(i) == {"request", "response"} for i in ids):
            return
        await asyncio.sleep(0.5)


def tally(
    name: str,
    description: str,
    sent: list[Sent],
    collector: CollectorProcess,
    server: ServerProcess,
    wall_s: float,
) -> dict[str, Any]:
    """One row of the fault table: requests, answers, events acknowledged, stored, lost, ..."""
    answered = [s for s in sent if s.status == 200]
    acknowledged = {s.request_id for s in answered}
    ids = {s.request_id for s in sent}
    stored = collector.stored()
    lost = sorted(
        f"{i} ({kind})"
        for i in acknowledged
        for kind in ("request", "response")
        if kind not in stored.get(i, set())
    )
    deliveries = collector.deliveries()
    mine = {k: n for k, n in deliveries.items() if k[0] in ids}
    latencies = [1000 * (s.answered_at - s.sent_at) for s in answered]
    counters = {
        key.split('outcome="', 1)[1].rstrip('"}'): int(value)
        for key, value in server.metrics.items()
        if key.startswith("garbage_payload_events_total{")
    }
    return {
        "fault": name,
        "description": description,
        "requests_sent": len(sent),
        "answered_200": len(answered),
        "answered_5xx": sum(1 for s in sent if s.status is not None and s.status >= 500),
        "answered_4xx": sum(1 for s in sent if s.status is not None and 400 <= s.status < 500),
        "not_answered": sum(1 for s in sent if s.status is None),
        "events_acknowledged": 2 * len(acknowledged),
        "events_stored": 2 * len(acknowledged) - len(lost),
        "lost": len(lost),
        "lost_events": lost,
        "duplicates": sum(n - 1 for n in mine.values()),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "peak_server_rss_mb": round(server.peak_rss_mb, 1),
        "logger_last_seen": counters,
        "peak_spill_events": server.metrics.get('peak garbage_payload_queue_events{where="spill"}'),
        "wall_s": round(wall_s, 1),
    }


# -- the faults -------------------------------------------------------------------------------


@dataclass
class Bench:
    """Where a run works, and what it serves."""

    work: Path
    model_dir: Path
    images: list[bytes]

    def fresh(self, name: str) -> tuple[CollectorProcess, ServerProcess]:
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        collector = CollectorProcess(folder, self.model_dir)
        server = ServerProcess(folder, self.model_dir, f"{collector.url}/events")
        return collector, server


async def _with_load(
    server: ServerProcess,
    rate: float,
    prefix: str,
    images: list[bytes],
    timeline: Callable[[], Awaitable[None]],
) -> list[Sent]:
    """Load the server while ``timeline`` runs (its faults, then its last phase)."""
    done = asyncio.Event()
    load = asyncio.create_task(drive(server, rate, prefix, images, until=done))
    try:
        await timeline()
    finally:
        done.set()
    return await load


async def _under_load(
    bench: Bench,
    name: str,
    what: str,
    rate: float,
    faults: Callable[[CollectorProcess, ServerProcess], Awaitable[None]],
    settle_s: float = 60.0,
) -> tuple[dict[str, Any], list[Sent]]:
    """Collector and server up, ``rate`` requests/s while ``faults`` runs; the tallied row."""
    collector, server = bench.fresh(name)
    collector.start()
    server.start()
    started = time.monotonic()
    with sampling(server):
        sent = await _with_load(server, rate, name, bench.images, lambda: faults(collector, server))
        await settle(collector, {s.request_id for s in sent if s.status == 200}, settle_s)
    server.stop()
    row = tally(name, what, sent, collector, server, time.monotonic() - started)
    collector.stop()
    return row, sent


async def collector_outage(
    bench: Bench,
    *,
    rate: float = OUTAGE_RATE,
    outage: float = OUTAGE_SECONDS,
    before: float = 5.0,
    after: float = 10.0,
    name: str = "collector-outage",
) -> dict[str, Any]:
    """The collector stopped (SIGTERM) for ``outage`` seconds under load, then restarted."""

    async def faults(collector: CollectorProcess, server: ServerProcess) -> None:
        await asyncio.sleep(before)
        await asyncio.to_thread(collector.stop)
        await asyncio.sleep(outage)
        await asyncio.to_thread(collector.start)
        await asyncio.sleep(after)

    what = f"collector down {outage:g} s at {rate:g} requests/s"
    row, _ = await _under_load(bench, name, what, rate, faults)
    return row


async def collector_kill(
    bench: Bench, *, rate: float = 20.0, before: float = 5.0, after: float = 10.0
) -> dict[str, Any]:
    """The collector killed (SIGKILL) under load and restarted at once."""

    async def faults(collector: CollectorProcess, server: ServerProcess) -> None:
        await asyncio.sleep(before)
        await asyncio.to_thread(collector.stop, signal.SIGKILL)
        await asyncio.to_thread(collector.start)
        await asyncio.sleep(after)

    what = f"collector SIGKILL at {before:g} s, restarted ({rate:g} requests/s)"
    row, _ = await _under_load(bench, "collector-kill-9", what, rate, faults)
    return row


async def server_kill(
    bench: Bench, *, rate: float = 20.0, before: float = 5.0, after: float = 10.0
) -> dict[str, Any]:
    """The model server killed (SIGKILL) under load, restarted on the same spill folder."""
    killed_at = 0.0

    async def faults(collector: CollectorProcess, server: ServerProcess) -> None:
        nonlocal killed_at
        await asyncio.sleep(before)
        await asyncio.to_thread(server.sample)
        assert server.process is not None
        killed_at = time.time()
        server.process.kill()
        await asyncio.to_thread(server.process.wait)
        await asyncio.to_thread(server.start)
        await asyncio.sleep(after)

    what = f"model server SIGKILL at {before:g} s, restarted on its spill ({rate:g} requests/s)"
    row, sent = await _under_load(bench, "server-kill-9", what, rate, faults, settle_s=30)
    answered = {s.request_id: s.answered_at for s in sent if s.status == 200}
    lost_ids = {e.split(" ", 1)[0] for e in row["lost_events"]}
    row["lost_answered_within_s_before_kill"] = (
        round(max(killed_at - answered[i] for i in lost_ids), 3) if lost_ids else None
    )
    return row


async def sink_never_answers(
    bench: Bench, *, rate: float = 20.0, seconds: float = 20.0, timeout: float = 2.0
) -> dict[str, Any]:
    """The logger's URL never answers; then the server restarts against the real collector."""
    name = "sink-never-answers"
    collector, server = bench.fresh(name)
    silent = SilentSink()
    server.logger_url = silent.url
    server.extra = ("--logger-timeout", str(timeout))
    server.start()
    baseline = process_memory(server.process.pid)[0] if server.process else 0.0
    started = time.monotonic()
    with sampling(server):
        sent = await drive(server, rate, name, bench.images, seconds=seconds)
    server.stop()  # clean stop: the queue goes to the spill
    silent.close()
    spilled_files = len(list(server.spill_dir.rglob("*.event")))
    collector.start()
    server.logger_url = f"{collector.url}/events"
    server.extra = ()
    server.start()
    with sampling(server):
        await settle(collector, {s.request_id for s in sent if s.status == 200}, 60)
    server.stop()
    row = tally(
        name,
        f"sink accepts and never answers ({seconds:g} s at {rate:g} requests/s, logger timeout "
        f"{timeout:g} s); then restarted against the collector",
        sent,
        collector,
        server,
        time.monotonic() - started,
    )
    row["server_rss_at_start_mb"] = round(baseline, 1)
    row["events_spilled_at_stop"] = spilled_files
    collector.stop()
    return row


# -- client mistakes, hostile images, unauthenticated writes -------------------------------------


def _v2(shape: Any, datatype: str = "BYTES", data: Any = None) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "image_bytes", "shape": shape, "datatype": datatype, "data": data}]}
    ).encode()


def client_mistakes(images: list[bytes]) -> list[tuple[str, str, str, bytes, dict[str, str]]]:
    """(where, name, path, body, headers) of malformed requests: all should get a 4xx."""
    jpeg = images[0]
    b64 = base64.b64encode(jpeg).decode()
    json_ct = {"Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    instances = json.dumps({"instances": [{}] * 700_000}).encode()  # about 2.8 MB of JSON
    huge = b'{"instances": [' + b"{}, " * (17 * 2**20 // 4) + b"{}]}"
    tall_png = encode(gradient(1, 40_000), "PNG")
    wide_png = encode(gradient(40_000, 1), "PNG")
    server_cases = [
        ("invalid JSON", b"{not json", json_ct),
        ("empty body", b"", json_ct),
        ("no instances", b'{"instances": []}', json_ct),
        ("empty instance", b'{"instances": [{}]}', json_ct),
        ("instances is a string", b'{"instances": "x"}', json_ct),
        ("bad base64", b'{"instances": [{"image_bytes": {"b64": "!!!"}}]}', json_ct),
        ("not an image", v1_body([b"not an image at all"]), json_ct),
        ("truncated JPEG", v1_body([jpeg[: len(jpeg) // 3]]), json_ct),
        ("empty image", v1_body([b""]), json_ct),
        ("65 instances", v1_body([jpeg] * 65), json_ct),
        ("deep JSON", deep, json_ct),
        ("700k empty instances", instances, json_ct),
        ("17 MiB body", huge, json_ct),
        ("40,000 x 1 PNG", v1_body([wide_png]), json_ct),
        ("1 x 40,000 PNG", v1_body([tall_png]), json_ct),
        ("v2 shape [true]", _v2([True], data=[b64]), json_ct),
        ("v2 shape [-1]", _v2([-1], data=[b64]), json_ct),
        ("v2 FP32 image_bytes", _v2([1], "FP32", [1.0]), json_ct),
        ("v2 shape [2], 1 element", _v2([2], data=[b64]), json_ct),
        ("v2 no inputs", b'{"inputs": []}', json_ct),
        (
            "v2 unknown input",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}',
            json_ct,
        ),
        ("text/plain body", b"hello", {"Content-Type": "text/plain"}),
    ]
    v2_path = f"/v2/models/{MODEL_NAME}/infer"
    cases = [
        ("server", name, v2_path if name.startswith("v2") else PREDICT, body, headers)
        for name, body, headers in server_cases
    ]
    cases.append(("server", "unknown model", "/v1/models/nope:predict", v1_body([jpeg]), json_ct))
    event = {
        "Ce-Specversion": "1.0",
        "Ce-Id": "mistake-1",
        "Ce-Type": "org.kubeflow.serving.inference.request",
        "Ce-Source": "http://localhost:9081/",
        "Content-Type": "application/json",
    }
    collector_cases = [
        ("event without ce headers", b"{}", json_ct),
        ("event body not JSON", b"{not json", event),
        (
            "event time at the calendar's edge",
            v1_body([jpeg]),
            {**event, "Ce-Time": "9999-12-31T23:59:59.999999999+14:00"},
        ),
        ("event id of 10 kB", v1_body([jpeg]), {**event, "Ce-Id": "x" * 10_000}),
        ("event deep JSON", deep, event),
        ("event unknown type", b"{}", {**event, "Ce-Type": "com.example.other"}),
        (
            "feedback item 2^63",
            json.dumps({"inference_id": "a", "label": "glass", "item": 2**63}).encode(),
            {**json_ct, "Authorization": f"Bearer {TOKEN}"},
        ),
        (
            "feedback unknown label",
            b'{"inference_id": "a", "label": "nope"}',
            {**json_ct, "Authorization": f"Bearer {TOKEN}"},
        ),
        ("feedback not JSON", b"{not json", {**json_ct, "Authorization": f"Bearer {TOKEN}"}),
    ]
    cases += [
        (
            "collector",
            name,
            "/feedback" if name.startswith("feedback") else "/events",
            body,
            headers,
        )
        for name, body, headers in collector_cases
    ]
    return cases


def hostile_images() -> list[tuple[str, bytes]]:
    """(shape, file) of large and odd images: what serving accepts must stay under 1 GB."""
    side = 6300  # 39.7 Mpx, just under the 40 Mpx limit
    return [
        (f"{side}x{side} JPEG", encode(gradient(side, side), "JPEG", quality=90)),
        (f"{side}x{side} progressive JPEG", encode(gradient(side, side), "JPEG", progressive=True)),
        (f"{side}x{side} PNG RGB", encode(gradient(side, side), "PNG")),
        (f"{side}x{side} PNG RGBA", encode(gradient(side, side, mode="RGBA"), "PNG")),
        (f"{side}x{side} PNG palette", encode(gradient(side, side, mode="P"), "PNG")),
        (f"{side}x{side} PNG 16-bit grey", encode(gradient(side, side, mode="I;16"), "PNG")),
        ("12000x1200 JPEG (aspect 10)", encode(gradient(12000, 1200), "JPEG")),
        ("1200x12000 PNG (aspect 10)", encode(gradient(1200, 12000), "PNG")),
        ("40000000x1 PNG", encode(gradient(40_000_000, 1), "PNG")),
        ("12000x12000 JPEG (144 Mpx)", encode(gradient(12000, 12000), "JPEG", quality=50)),
    ]


async def probe_requests(
    server: ServerProcess, collector: CollectorProcess, images: list[bytes]
) -> dict[str, list[dict[str, Any]]]:
    """Run the three tables against a running server and collector."""
    import httpx

    assert server.process is not None
    pid = server.process.pid
    mistakes = []
    hostile = []
    auth = []
    async with httpx.AsyncClient(timeout=120) as client:

        async def post(base: str, path: str, body: bytes, headers: dict[str, str]) -> str:
            try:
                answer = await client.post(base + path, content=body, headers=headers)
            except httpx.HTTPError as e:
                return f"no answer ({type(e).__name__})"
            return str(answer.status_code)

        for where, name, path, body, headers in client_mistakes(images):
            base = server.url if where == "server" else collector.url
            got = await post(base, path, body, headers)
            after = await post(server.url, PREDICT, v1_body(images[:1]), {})
            mistakes.append(
                {
                    "target": where,
                    "case": name,
                    "status": got,
                    "is_5xx": got.startswith("5") or got.startswith("no answer"),
                    "good_request_after": after,
                    "server_rss_mb": round(process_memory(pid)[0], 1),
                }
            )
        for shape, data in await asyncio.to_thread(hostile_images):
            reset = reset_peak_memory(pid)
            before = process_memory(pid)[0]
            got = await post(server.url, PREDICT, v1_body([data]), {})
            hostile.append(
                {
                    "image": shape,
                    "file_bytes": len(data),
                    "status": got,
                    "accepted": got == "200",
                    "rss_before_mb": round(before, 1),
                    "peak_rss_mb": round(process_memory(pid)[1], 1) if reset else None,
                }
            )
        writes = [
            ("collector /feedback without a token", collector.url, "/feedback", {}, "401"),
            (
                "collector /feedback with a wrong token",
                collector.url,
                "/feedback",
                {"Authorization": "Bearer not-the-token-0123456789"},
                "403",
            ),
            (
                "server model-repository unload",
                server.url,
                f"/v2/repository/models/{MODEL_NAME}/unload",
                {},
                "404 or 405",
            ),
            (
                "server model-repository load",
                server.url,
                f"/v2/repository/models/{MODEL_NAME}/load",
                {},
                "404 or 405",
            ),
        ]
        feedback = json.dumps({"inference_id": "x", "label": "glass"}).encode()
        for name, base, path, headers, expected in writes:
            got = await post(base, path, feedback, {"Content-Type": "application/json", **headers})
            ready = await client.get(f"{server.url}/v2/models/{MODEL_NAME}/ready")
            auth.append(
                {
                    "write": name,
                    "status": got,
                    "expected": expected,
                    "refused": got in expected.split(" or "),
                    "model_ready_after": ready.status_code,
                }
            )
    return {"client_mistakes": mistakes, "hostile_images": hostile, "unauthenticated_writes": auth}


async def probes(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    collector, server = bench.fresh("probes")
    collector.start()
    server.start()
    try:
        return await probe_requests(server, collector, bench.images)
    finally:
        server.stop()
        collector.stop()


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on (bench/machine.py), with the load average now."""
    sys.path.insert(0, str(REPO))
    from bench.machine import describe_machine

    described = describe_machine(("kserve", "onnxruntime", "httpx", "uvicorn", "SQLAlchemy"))
    described["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return described


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    faults = {row["fault"]: row for row in report["faults"]}
    mistakes = report["client_mistakes"]
    accepted = [r for r in report["hostile_images"] if r["accepted"]]
    peak = max((r["peak_rss_mb"] or 0.0 for r in accepted), default=0.0)
    outage = faults.get("collector-outage", {})
    return {
        "0 x 5xx for client mistakes": {
            "value": sum(r["is_5xx"] for r in mistakes),
            "limit": 0,
            "pass": not any(r["is_5xx"] for r in mistakes),
        },
        f"0 acknowledged events lost across a {OUTAGE_SECONDS:g} s collector outage at "
        f"{OUTAGE_RATE:g} requests/s": {
            "value": outage.get("lost"),
            "limit": 0,
            "pass": outage.get("lost") == 0 and outage.get("answered_5xx") == 0,
        },
        f"peak server RSS under {RSS_LIMIT_MB} MB for any single accepted image": {
            "value": peak,
            "limit": RSS_LIMIT_MB,
            "pass": bool(accepted) and peak < RSS_LIMIT_MB,
        },
        "unauthenticated writes refused": {
            "value": sum(r["refused"] for r in report["unauthenticated_writes"]),
            "limit": len(report["unauthenticated_writes"]),
            "pass": all(r["refused"] for r in report["unauthenticated_writes"]),
        },
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _loads(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Fault benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available, {m['memory_gib']} GiB; "
        f"load average (1, 5, 15 min) at start {_loads(m['load_average_at_start'])}, at end "
        f"{_loads(m['load_average'])} (other work on the machine inflates latencies); "
        f"Python {m['python']}, "
        f"KServe {m['packages'].get('kserve')}. Model: {report['model']}. "
        f"Command: `{report['command']}` ({report['wall_s']:.0f} s).",
        "",
        "## Faults",
        "",
        "| fault | requests sent | answered 200 | events acknowledged | events stored | lost "
        "| duplicates | 5xx | not answered | p99 ms | peak server RSS MB | peak spilled |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["faults"]:
        lines.append(
            f"| {r['fault']}: {r['description']} | {r['requests_sent']} | {r['answered_200']} | "
            f"{r['events_acknowledged']} | {r['events_stored']} | {r['lost']} | "
            f"{r['duplicates']} | {r['answered_5xx']} | {r['not_answered']} | "
            f"{_cell(r['p99_ms'])} | {_cell(r['peak_server_rss_mb'])} | "
            f"{_cell(r['peak_spill_events'])} |"
        )
    for r in report["faults"]:
        if r["lost_events"]:
            shown = ", ".join(r["lost_events"][:20]) + (", ..." if r["lost"] > 20 else "")
            lines.append(f"\nLost in {r['fault']}: {shown}.")
        if r.get("lost_answered_within_s_before_kill") is not None:
            lines.append(
                f"The lost events of {r['fault']} belong to requests answered at most "
                f"{r['lost_answered_within_s_before_kill']} s before the kill."
            )
    lines += [
        "",
        "## Client mistakes (each followed by a good request)",
        "",
        "| target | case | status | 5xx | good request after | server RSS MB |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    for r in report["client_mistakes"]:
        lines.append(
            f"| {r['target']} | {r['case']} | {r['status']} | {'YES' if r['is_5xx'] else 'no'} "
            f"| {r['good_request_after']} | {r['server_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "## Hostile images (one per request, the server's peak RSS reset before each)",
        "",
        "| image | file bytes | status | accepted | RSS before MB | peak RSS MB |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for r in report["hostile_images"]:
        lines.append(
            f"| {r['image']} | {r['file_bytes']} | {r['status']} | "
            f"{'yes' if r['accepted'] else 'no'} | {r['rss_before_mb']:.0f} | "
            f"{_cell(r['peak_rss_mb'])} |"
        )
    lines += [
        "",
        "## Unauthenticated writes",
        "",
        "| write | status | expected | refused | model ready after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["unauthenticated_writes"]:
        lines.append(
            f"| {r['write']} | {r['status']} | {r['expected']} | "
            f"{'yes' if r['refused'] else 'NO'} | {r['model_ready_after']} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "| check | measured | limit | pass |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, c in report["targets"].items():
        lines.append(
            f"| {name} | {_cell(c['value'])} | {c['limit']} | {'yes' if c['pass'] else 'NO'} |"
        )
    lines += [
        "",
        "Events acknowledged: 2 per request answered 200 (its request and response event). "
        "Stored: those the collector's store holds once the fault is over, the load has "
        "stopped and the server has stopped cleanly (it sends or spills its queue; for "
        "sink-never-answers a second server run sends the spill). Duplicates: deliveries the "
        "collector accepted more than once (the store keeps one row per ce-id and item). "
        "Not answered: requests that got no HTTP answer (the server was down: refused). p99: "
        "latency of the requests answered 200, client side. Peak server RSS: the high-water "
        "mark of the server process (across its restarts). Peak spilled: the most events the "
        "payload logger held in its on-disk spill, sampled every 0.25 s.",
    ]
    return "\n".join(lines) + "\n"


async def run(bench: Bench, *, outage: float, rate: float) -> dict[str, Any]:
    faults = [
        await collector_outage(bench, rate=rate, outage=outage),
        await collector_kill(bench),
        await server_kill(bench),
        await sink_never_answers(bench),
    ]
    tables = await probes(bench)
    return {"faults": faults, **tables}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="Model folder (default: an export under work/bench)."
    )
    parser.add_argument("--outage", type=float, default=OUTAGE_SECONDS, help="Outage seconds.")
    parser.add_argument("--rate", type=float, default=OUTAGE_RATE, help="Requests/s in the outage.")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench" / "faults")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--collector", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collector:
        run_collector(json.loads(args.collector))
        return 0
    started = time.monotonic()
    info = machine()
    if args.model is None:
        sys.path.insert(0, str(REPO / "bench"))
        from bench_serve import default_model

        args.model = default_model(REPO / "work" / "bench")
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    bench = Bench(args.work, args.model, load_images())
    report: dict[str, Any] = {
        "machine": info,
        "model": str(
            args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model
        ),
        "command": " ".join(["bench/bench_faults.py", *sys.argv[1:]]),
    }
    report.update(asyncio.run(run(bench, outage=args.outage, rate=args.rate)))
    report["machine"]["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = time.monotonic() - started
    report["targets"] = targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "faults.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(c["pass"] for c in report["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
