"""Serving benchmark: the model in-process, then the KServe server over REST v1, REST v2 and gRPC.

    .venv/bin/python bench/bench_serve.py            # make bench-serve; about 2 minutes

1. In-process: ``OnnxClassifier.predict_bytes`` (decode + model, what ``garbage predict`` runs)
   at batch 1 and batch 32, and ``predict_pixels`` (model only) for reference, with
   OnnxClassifier's default thread count and with the server's.
2. Server: ``python -m serving`` (default settings) in its own process on 127.0.0.1, loaded by a
   separate load-generator process (asyncio; aiohttp for REST, grpc.aio for gRPC) with 1 image
   per request at each concurrency: requests/s, images/s, p50/p99 latency, errors, mean
   micro-batch size and the server's CPU time per image.
3. Targets (2 CPUs): at concurrency 1, p50 at most 2 ms above the in-process single-image p50;
   at the highest concurrency, at least 70 % of the in-process batch-32 images/s; no errors.
   The concurrency-1 cases measure their in-process reference side by side: the load generator
   alternates phases of requests to the server with phases of ``predict_bytes`` in its own
   process, so that the two latencies see the same machine (these machines are shared and
   noisy: the same figure measured a minute apart moves by 1 ms and more).

The model is exported at the default config's input size (an untrained head over the pretrained
EfficientNet-Lite0, like the tests' ``tiny_model_dir``; speed does not depend on the weights)
unless ``--model`` names one. Images are the TrashNet development archive's JPEGs (112x84).
Writes ``bench/results/serve.json`` and ``bench/results/serve.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from garbage.core.names import MODEL_NAME  # noqa: E402
from garbage.core.protocol import (  # noqa: E402
    BINARY_DATA_SIZE,
    BYTES_INPUT,
    INFERENCE_HEADER,
    pack_bytes_tensor,
    v1_request,
)

DEV_ARCHIVE = REPO.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
RESULTS = REPO / "bench" / "results"
PROTOCOLS = ("rest-v1", "rest-v2-json", "rest-v2-binary", "grpc")
TARGET_LATENCY_OVERHEAD_MS = 2.0
TARGET_BATCHED_FRACTION = 0.70
PAIRED_PHASE_S = 0.25
"""Length of one phase of a concurrency-1 case (server requests, then in-process calls, ...)."""


# -- inputs ---------------------------------------------------------------------------------------


def load_images(archive: Path, count: int) -> list[bytes]:
    """``count`` JPEGs from the development archive (every class), or synthetic ones without it."""
    if archive.is_file():
        images = []
        with tarfile.open(archive) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")),
                key=lambda m: m.name,
            )
            step = max(1, len(members) // count)
            for member in members[::step][:count]:
                images.append(tar.extractfile(member).read())
        return images
    from tests.support import COLORS, jpeg_bytes

    colors = list(COLORS.values())
    return [jpeg_bytes(colors[i % len(colors)], seed=i) for i in range(count)]


def default_model(cache: Path) -> Path:
    """An exported model at the default config's input size, built once into ``cache``."""
    from garbage.core.config import load_config

    config = load_config(environ={})
    out = cache / f"serve-model-{config.model.image_height}x{config.model.image_width}"
    if (out / "export" / "model.onnx").is_file():
        return out / "export"
    from garbage.training.export import export_onnx
    from garbage.training.model import build_model
    from garbage.training.train import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    model = build_model(config.model.backbone, len(config.data.classes), pretrained=True)
    save_checkpoint(out / "best.pt", model, config.data.classes, config, {"epoch": 0})
    export_onnx(out / "best.pt", out / "export")
    return out / "export"


# -- in-process -----------------------------------------------------------------------------------


def _timed(fn, seconds: float, min_runs: int) -> tuple[np.ndarray, float]:
    """Wall time of each call, and the process's CPU seconds (all threads) over all calls."""
    times = []
    cpu = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_runs:
        start = time.perf_counter()
        fn(len(times))
        times.append(time.perf_counter() - start)
    return np.array(times), time.process_time() - cpu


def in_process(
    model_dir: Path, images: list[bytes], seconds: float, thread_counts: list[int | None]
) -> list[dict[str, Any]]:
    """Latency and throughput of ``OnnxClassifier`` called directly, per intra-op thread count.

    ``None`` is OnnxClassifier's default (all CPUs: what ``garbage predict`` uses); the server's
    own count is measured too when it differs, so that the targets compare against the better of
    the two.
    """
    from garbage.core.classifier import OnnxClassifier

    rows = []
    n = len(images)
    for threads in thread_counts:
        classifier = OnnxClassifier.load(model_dir, device="cpu", intra_op_threads=threads)
        used = classifier.session.get_session_options().intra_op_num_threads
        pixels = np.stack([classifier.preprocess(b) for b in images])
        classifier.predict_bytes(images[:32])  # warm-up
        for call, batch, fn in (
            ("predict_bytes", 1, lambda i, c=classifier: c.predict_bytes([images[i % n]])),
            (
                "predict_bytes",
                32,
                lambda i, c=classifier: c.predict_bytes(
                    [images[(i * 32 + k) % n] for k in range(32)]
                ),
            ),
            (
                "predict_pixels",
                1,
                lambda i, c=classifier, p=pixels: c.predict_pixels(p[i % n][None]),
            ),
            (
                "predict_pixels",
                32,
                lambda i, c=classifier, p=pixels: c.predict_pixels(
                    np.roll(p, -32 * i, axis=0)[:32]
                ),
            ),
        ):
            times, cpu_s = _timed(fn, seconds, 5)
            rows.append(
                {
                    "call": call,
                    "threads": used,
                    "default_threads": threads is None,
                    "batch": batch,
                    "calls": len(times),
                    "p50_ms": float(np.percentile(times, 50) * 1e3),
                    "p99_ms": float(np.percentile(times, 99) * 1e3),
                    "images_per_s": float(batch * len(times) / times.sum()),
                    "cpu_ms_per_image": cpu_s * 1e3 / (batch * len(times)),
                }
            )
    return rows


def server_threads(server_args: list[str]) -> dict[str, int]:
    """The thread budget ``python -m serving`` will use with these flags (one worker, CPU)."""
    from serving.settings import ServingSettings, thread_budget

    flags = dict(a.lstrip("-").split("=", 1) for a in server_args if "=" in a)
    settings = ServingSettings.from_sources(
        intra_op_threads=flags.get("intra_op_threads"), decode_threads=flags.get("decode_threads")
    )
    intra, decode = thread_budget(settings, int(flags.get("workers", 1)))
    return {"intra_op": intra, "decode": decode}


# -- server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, extra: list[str], log_path: Path):
    """``python -m serving`` on free ports; yields ``(http_port, grpc_port, pid)``."""
    import urllib.request

    http_port, grpc_port = free_port(), free_port()
    ports = ["--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    command = [sys.executable, "-m", "serving", "--model_dir", str(model_dir), *ports, *extra]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/v2/models/{MODEL_NAME}/ready", timeout=1
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the server did not become ready in 90 s")
            time.sleep(0.25)
        yield http_port, grpc_port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# -- load generator (runs in its own process) ------------------------------------------------------


def _requests(protocol: str, images: list[bytes]) -> list[tuple[bytes | Any, dict[str, str]]]:
    out = []
    for image in images:
        if protocol == "rest-v1":
            body = json.dumps(v1_request([image]))
            out.append((body.encode(), {"content-type": "application/json"}))
        elif protocol == "rest-v2-json":
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": BYTES_INPUT,
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [base64.b64encode(image).decode()],
                        }
                    ]
                }
            )
            out.append((body.encode(), {"content-type": "application/json"}))
        elif protocol == "rest-v2-binary":
            raw = pack_bytes_tensor([image])
            head = json.dumps(
                {
                    "inputs": [
                        {
                            "name": BYTES_INPUT,
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {BINARY_DATA_SIZE: len(raw)},
                        }
                    ]
                }
            ).encode()
            out.append(
                (
                    head + raw,
                    {
                        "content-type": "application/octet-stream",
                        INFERENCE_HEADER: str(len(head)),
                    },
                )
            )
        else:
            from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

            tensor = pb.ModelInferRequest.InferInputTensor(
                name=BYTES_INPUT, datatype="BYTES", shape=[1]
            )
            out.append(
                (
                    pb.ModelInferRequest(
                        model_name=MODEL_NAME,
                        inputs=[tensor],
                        raw_input_contents=[pack_bytes_tensor([image])],
                    ),
                    {},
                )
            )
    return out


async def _case(
    protocol: str,
    concurrency: int,
    images: list[bytes],
    http_port: int,
    grpc_port: int,
    warmup: float,
    duration: float,
    server_pid: int,
    reference: Any = None,
) -> dict[str, Any]:
    """One protocol at one concurrency; with ``reference`` (an ``OnnxClassifier``, concurrency 1
    only) the worker alternates server phases with in-process ``predict_bytes`` phases."""
    requests = _requests(protocol, images)
    latencies: list[float] = []
    reference_latencies: list[float] = []
    errors = 0
    error_samples: list[str] = []
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    end = measure_from + duration

    if protocol == "grpc":
        import grpc
        from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = GRPCInferenceServiceStub(channel)

        async def send(request, _headers) -> str | None:
            try:
                response = await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as e:
                return f"{e.code().name}: {e.details()}"
            return None if len(response.raw_output_contents) == 3 else "incomplete response"

        close = channel.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        path = (
            f"/v1/models/{MODEL_NAME}:predict"
            if protocol == "rest-v1"
            else f"/v2/models/{MODEL_NAME}/infer"
        )
        url = f"http://127.0.0.1:{http_port}{path}"

        async def send(body, headers) -> str | None:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    content = await response.read()
                    if response.status != 200:
                        return f"HTTP {response.status}: {content[:200]!r}"
            except aiohttp.ClientError as e:
                return repr(e)
            return None

        close = session.close

    async def worker(k: int) -> None:
        nonlocal errors
        i = k
        while loop.time() < end:
            if reference is not None and int(loop.time() / PAIRED_PHASE_S) % 2:
                start = loop.time()  # in-process phase: blocks the loop, there is one worker
                reference.predict_bytes([images[i % len(images)]])
                i += 1
                if start >= measure_from and loop.time() <= end:
                    reference_latencies.append(loop.time() - start)
                continue
            body, headers = requests[i % len(requests)]
            i += concurrency
            start = loop.time()
            problem = await send(body, headers)
            finish = loop.time()
            if start >= measure_from and finish <= end:
                latencies.append(finish - start)
                if problem:
                    errors += 1
                    if len(error_samples) < 3:
                        error_samples.append(problem)

    async def observe() -> tuple[float, dict[str, float], float, dict[str, float]]:
        """Server CPU seconds and batch metrics at the start and the end of the measured window."""
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        first = (_process_cpu_s(server_pid), await loop.run_in_executor(None, _metrics, http_port))
        await asyncio.sleep(max(0.0, end - loop.time()))
        return (
            *first,
            _process_cpu_s(server_pid),
            await loop.run_in_executor(None, _metrics, http_port),
        )

    *_, (cpu0, metrics0, cpu1, metrics1) = await asyncio.gather(
        *(worker(k) for k in range(concurrency)), observe()
    )
    await close()
    calls = metrics1["count"] - metrics0["count"]
    lat = np.array(latencies) if latencies else np.array([np.nan])
    # Requests/s over the server phases only: wall time less the in-process calls.
    server_seconds = duration - float(np.sum(reference_latencies))
    row = {
        "protocol": protocol,
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / server_seconds,
        "images_per_s": len(latencies) / server_seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "errors": errors,
        "error_samples": error_samples,
        "server_cpu_ms_per_image": (cpu1 - cpu0) * 1e3 / max(1, metrics1["sum"] - metrics0["sum"]),
        "mean_batch": (metrics1["sum"] - metrics0["sum"]) / calls if calls else float("nan"),
    }
    if reference is not None:
        row["in_process_calls"] = len(reference_latencies)
        row["in_process_p50_ms"] = float(np.percentile(reference_latencies, 50) * 1e3)
        row["overhead_ms"] = row["p50_ms"] - row["in_process_p50_ms"]
    return row


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadgen(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every protocol x concurrency case, one after the other."""
    from garbage.core.classifier import OnnxClassifier

    images = load_images(Path(spec["archive"]), spec["images"])
    reference = OnnxClassifier.load(
        Path(spec["model_dir"]), device="cpu", intra_op_threads=spec["intra_op_threads"]
    )
    reference.predict_bytes(images[:32])  # warm-up
    results = []
    for protocol in spec["protocols"]:
        for concurrency in spec["concurrency"]:
            results.append(
                asyncio.run(
                    _case(
                        protocol,
                        concurrency,
                        images,
                        spec["http_port"],
                        spec["grpc_port"],
                        spec["warmup"],
                        spec["duration"],
                        spec["server_pid"],
                        reference if concurrency == 1 else None,
                    )
                )
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


# -- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The shared machine description, plus the CPU count the server's thread budget uses."""
    from machine import describe_machine

    from serving.settings import available_cpus

    info = describe_machine(("onnxruntime", "kserve", "numpy", "pillow"))
    info["cpus_for_serving"] = available_cpus()
    info["load_average_at_end"] = None
    return info


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    bytes_rows = [r for r in report["in_process"] if r["call"] == "predict_bytes"]
    single = min(r["p50_ms"] for r in bytes_rows if r["batch"] == 1)
    batched = max(r["images_per_s"] for r in bytes_rows if r["batch"] == 32)
    checks = {}
    for row in report["server"]:
        if row["concurrency"] == 1:
            reference = row.get("in_process_p50_ms", single)
            checks[
                f"{row['protocol']} c=1 p50 <= in-process b1 p50 (side by side) "
                f"+ {TARGET_LATENCY_OVERHEAD_MS} ms"
            ] = {
                "value_ms": row["p50_ms"],
                "limit_ms": reference + TARGET_LATENCY_OVERHEAD_MS,
                "pass": row["p50_ms"] <= reference + TARGET_LATENCY_OVERHEAD_MS,
            }
        if row["concurrency"] == max(r["concurrency"] for r in report["server"]):
            checks[
                f"{row['protocol']} c={row['concurrency']} images/s >= "
                f"{TARGET_BATCHED_FRACTION:.0%} of in-process b32"
            ] = {
                "value": row["images_per_s"],
                "limit": TARGET_BATCHED_FRACTION * batched,
                "pass": row["images_per_s"] >= TARGET_BATCHED_FRACTION * batched,
            }
    checks["zero errors"] = {
        "value": sum(r["errors"] for r in report["server"]),
        "pass": all(r["errors"] == 0 for r in report["server"]),
    }
    return checks


def _load(values: Any) -> str:
    return ", ".join(f"{x:.2f}" for x in values) if values else "n/a"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available, {m['memory_gib']} GiB; "
        f"load average (1, 5, 15 min) at start {_load(m['load_average_at_start'])}, at end "
        f"{_load(m['load_average_at_end'])} (other work on the machine inflates latencies); "
        f"Python {m['python']}, ONNX Runtime {m['packages']['onnxruntime']}, KServe "
        f"{m['packages']['kserve']}. Model: {report['model']['input']} "
        f"({report['model']['path']}). Command: `{report['command']}`.",
        "",
        "## In-process (OnnxClassifier called directly, one caller)",
        "",
        "| call | intra-op threads | batch | p50 ms | p99 ms | images/s | CPU ms/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["in_process"]:
        role = "default" if row["default_threads"] else "server"
        if row["threads"] == report["server_threads"]["intra_op"] and row["default_threads"]:
            role = "default = server"
        threads = f"{row['threads']} ({role})"
        lines.append(
            f"| {row['call']} | {threads} | {row['batch']} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['images_per_s']:.1f} | {row['cpu_ms_per_image']:.2f} |"
        )
    s = report["server_settings"]
    lines += [
        "",
        f"## Server (1 image per request; {report['duration_s']} s per case after "
        f"{report['warmup_s']} s warm-up; load from a separate process; server flags: "
        f"`{' '.join(s) or '(defaults)'}`)",
        "",
        "| protocol | concurrency | requests/s | images/s | p50 ms | p99 ms | errors "
        "| mean batch | server CPU ms/image | in-process b1 p50 ms, side by side | overhead ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["server"]:
        paired = (
            f"{row['in_process_p50_ms']:.2f} | {row['overhead_ms']:+.2f}"
            if "in_process_p50_ms" in row
            else " | "
        )
        lines.append(
            f"| {row['protocol']} | {row['concurrency']} | {row['requests_per_s']:.1f} | "
            f"{row['images_per_s']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['errors']} | {row['mean_batch']:.1f} | {row['server_cpu_ms_per_image']:.2f} | "
            f"{paired} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "| check | measured | limit | pass |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, c in report["targets"].items():
        value = c.get("value_ms", c.get("value"))
        limit = c.get("limit_ms", c.get("limit", 0))
        lines.append(f"| {name} | {value:.2f} | {limit:.2f} | {'yes' if c['pass'] else 'NO'} |")
    lines += [
        "",
        "Latency is measured by the load generator (client side, so it includes the client's own "
        "HTTP/gRPC work on the same CPUs). mean batch: images per model call during the case "
        "(garbage_batch_size); server CPU ms/image: the server process's user+system CPU time "
        "over the images it classified (in-process CPU ms/image: the same for the benchmark "
        "process; CPU time is less sensitive than latency to other work on the machine). "
        "In-process rows use OnnxClassifier directly; "
        "predict_bytes includes decoding, as garbage predict does. Concurrency-1 cases alternate "
        f"{PAIRED_PHASE_S} s phases of server requests with phases of in-process predict_bytes "
        "(server's thread count) in the load generator, and their latency target compares with "
        "that side-by-side in-process p50; requests/s counts the server phases only (an "
        "in-process p50 well above its value in the other cases means other work loaded the "
        "machine during that case, which inflates the server's overhead too). The "
        "throughput target compares with the best in-process batch-32 predict_bytes figure.",
    ]
    return "\n".join(lines) + "\n"


def _metrics(http_port: int) -> dict[str, float]:
    """The server's ``garbage_batch_size`` histogram: images (sum) and model calls (count)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in values:
            if line.startswith(f"garbage_batch_size_{key}{{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="Exported model folder; default: build one at the "
        "default config's input size under work/bench.",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="Measured seconds per server case."
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="Unmeasured seconds before each case."
    )
    parser.add_argument("--in-process-seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--images", type=int, default=256, help="Distinct images cycled through.")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="Extra flag for python -m serving (repeatable), e.g. --server-arg=--max_batch_size=8.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        print(json.dumps(loadgen(json.loads(args.loadgen))))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["bench/bench_serve.py", *sys.argv[1:]]),
    }
    model_dir = (args.model or default_model(REPO / "work" / "bench")).resolve()
    images = load_images(DEV_ARCHIVE, args.images)
    from garbage.core.classifier import OnnxClassifier

    probe = OnnxClassifier.load(model_dir, device="cpu", intra_op_threads=1)
    report["model"] = {
        "path": str(model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir),
        "input": f"uint8 [N, {probe.height}, {probe.width}, 3]",
    }
    report["images"] = {
        "count": len(images),
        "mean_bytes": float(np.mean([len(b) for b in images])),
        "source": str(DEV_ARCHIVE) if DEV_ARCHIVE.is_file() else "synthetic",
    }
    del probe
    print("in-process ...", file=sys.stderr, flush=True)
    report["server_threads"] = server_threads(args.server_arg)
    server_intra = report["server_threads"]["intra_op"]
    same = server_intra == (os.cpu_count() or 1)  # OnnxClassifier's default
    report["in_process"] = in_process(
        model_dir, images, args.in_process_seconds, [None] if same else [None, server_intra]
    )
    report["server_settings"] = list(args.server_arg)
    report["duration_s"], report["warmup_s"] = args.duration, args.warmup
    with running_server(
        model_dir, report["server_settings"], args.out / "serve-server.log.tmp"
    ) as (http_port, grpc_port, pid):
        spec = {
            "server_pid": pid,
            "archive": str(DEV_ARCHIVE),
            "images": args.images,
            "protocols": args.protocols,
            "concurrency": args.concurrency,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "model_dir": str(model_dir),
            "intra_op_threads": report["server_threads"]["intra_op"],
            "warmup": args.warmup,
            "duration": args.duration,
        }
        print("server ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--loadgen", json.dumps(spec)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            check=True,
        )
        report["server"] = json.loads(done.stdout)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["targets"] = verdict(report)
    report["elapsed_s"] = round(time.time() - started, 1)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
