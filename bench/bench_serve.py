"""Serving benchmark: the model in-process, then the KServe server over REST v1, REST v2 and gRPC.

    .venv/bin/python bench/bench_serve.py            # make bench-serve; about 3 minutes

1. In-process: ``OnnxClassifier.predict_bytes`` (decode + model, what ``garbage predict`` runs)
   at batch 1 and batch 32, and ``predict_pixels`` (model only) for reference.
2. Server: ``python -m serving`` in its own process on 127.0.0.1, loaded by a separate load
   generator process (asyncio; aiohttp for REST, grpc.aio for gRPC) with 1 image per request at
   each concurrency: requests/s, images/s, p50/p99 latency, errors.

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
import platform
import socket
import struct
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
DEV_ARCHIVE = REPO.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
RESULTS = REPO / "bench" / "results"
MODEL_NAME = "garbage-classifier"
PROTOCOLS = ("rest-v1", "rest-v2-json", "rest-v2-binary", "grpc")
TARGET_LATENCY_OVERHEAD_MS = 2.0
TARGET_BATCHED_FRACTION = 0.70


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
    from tests.conftest import COLORS, jpeg_bytes

    colors = list(COLORS.values())
    return [jpeg_bytes(colors[i % len(colors)], seed=i) for i in range(count)]


def default_model(cache: Path) -> Path:
    """An exported model at the default config's input size, built once into ``cache``."""
    from components.config import load_config

    config = load_config(environ={})
    out = cache / f"serve-model-{config.model.image_height}x{config.model.image_width}"
    if (out / "export" / "model.onnx").is_file():
        return out / "export"
    from components.export import export_onnx
    from components.model import build_model
    from components.training.train import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    model = build_model(config.model.backbone, len(config.data.classes), pretrained=True)
    save_checkpoint(out / "best.pt", model, config.data.classes, config, {"epoch": 0})
    export_onnx(out / "best.pt", out / "export")
    return out / "export"


# -- in-process -----------------------------------------------------------------------------------


def _timed(fn, seconds: float, min_runs: int) -> np.ndarray:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_runs:
        start = time.perf_counter()
        fn(len(times))
        times.append(time.perf_counter() - start)
    return np.array(times)


def in_process(model_dir: Path, images: list[bytes], seconds: float) -> dict[str, Any]:
    """Latency and throughput of the model called directly (default threads, as garbage predict)."""
    from components.inference import OnnxClassifier

    classifier = OnnxClassifier.load(model_dir, device="cpu")
    pixels = np.stack([classifier.preprocess(b) for b in images])
    n = len(images)
    classifier.predict_bytes(images[:32])  # warm-up
    rows = {}
    for label, batch, fn in (
        ("predict_bytes b1", 1, lambda i: classifier.predict_bytes([images[i % n]])),
        (
            "predict_bytes b32",
            32,
            lambda i: classifier.predict_bytes([images[(i * 32 + k) % n] for k in range(32)]),
        ),
        ("predict_pixels b1", 1, lambda i: classifier.predict_pixels(pixels[i % n : i % n + 1])),
        (
            "predict_pixels b32",
            32,
            lambda i: classifier.predict_pixels(
                pixels[(i * 32) % (n - 32) : (i * 32) % (n - 32) + 32]
            ),
        ),
    ):
        times = _timed(fn, seconds, 5)
        rows[label] = {
            "batch": batch,
            "calls": len(times),
            "p50_ms": float(np.percentile(times, 50) * 1e3),
            "p99_ms": float(np.percentile(times, 99) * 1e3),
            "images_per_s": float(batch * len(times) / times.sum()),
        }
    rows["threads"] = classifier.session.get_session_options().intra_op_num_threads
    return rows


# -- server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, extra: list[str], log_path: Path):
    """``python -m serving`` on free ports; yields ``(http_port, grpc_port)``."""
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
        yield http_port, grpc_port
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
            body = json.dumps(
                {"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}}]}
            )
            out.append((body.encode(), {"content-type": "application/json"}))
        elif protocol == "rest-v2-json":
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image_bytes",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [base64.b64encode(image).decode()],
                        }
                    ]
                }
            )
            out.append((body.encode(), {"content-type": "application/json"}))
        elif protocol == "rest-v2-binary":
            raw = struct.pack("<I", len(image)) + image
            head = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image_bytes",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(raw)},
                        }
                    ]
                }
            ).encode()
            out.append(
                (
                    head + raw,
                    {
                        "content-type": "application/octet-stream",
                        "inference-header-content-length": str(len(head)),
                    },
                )
            )
        else:
            from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

            tensor = pb.ModelInferRequest.InferInputTensor(
                name="image_bytes", datatype="BYTES", shape=[1]
            )
            out.append(
                (
                    pb.ModelInferRequest(
                        model_name=MODEL_NAME,
                        inputs=[tensor],
                        raw_input_contents=[struct.pack("<I", len(image)) + image],
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
) -> dict[str, Any]:
    requests = _requests(protocol, images)
    latencies: list[float] = []
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

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    await close()
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / duration,
        "images_per_s": len(latencies) / duration,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "errors": errors,
        "error_samples": error_samples,
    }


def loadgen(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every protocol x concurrency case, one after the other."""
    images = load_images(Path(spec["archive"]), spec["images"])
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
                    )
                )
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


# -- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from serving.settings import available_cpus

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import kserve
    import onnxruntime

    return {
        "cpu": cpu,
        "cpus_available": available_cpus(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "kserve": kserve.__version__ if hasattr(kserve, "__version__") else "0.21",
        "platform": platform.platform(),
    }


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    single = report["in_process"]["predict_bytes b1"]["p50_ms"]
    batched = report["in_process"]["predict_bytes b32"]["images_per_s"]
    checks = {}
    for row in report["server"]:
        if row["concurrency"] == 1:
            checks[
                f"{row['protocol']} c=1 p50 <= in-process b1 p50 + {TARGET_LATENCY_OVERHEAD_MS} ms"
            ] = {
                "value_ms": row["p50_ms"],
                "limit_ms": single + TARGET_LATENCY_OVERHEAD_MS,
                "pass": row["p50_ms"] <= single + TARGET_LATENCY_OVERHEAD_MS,
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


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available ({m['cpu_count']} online), "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; "
        f"Python {m['python']}, ONNX Runtime {m['onnxruntime']}. Model: {report['model']['input']} "
        f"({report['model']['path']}). Command: `{report['command']}`.",
        "",
        "## In-process (one thread of control, ONNX Runtime with "
        f"{report['in_process']['threads']} intra-op threads)",
        "",
        "| call | batch | p50 ms | p99 ms | images/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["in_process"].items():
        if isinstance(row, dict):
            lines.append(
                f"| {name} | {row['batch']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['images_per_s']:.1f} |"
            )
    s = report["server_settings"]
    lines += [
        "",
        f"## Server (1 image per request; {report['duration_s']} s per case after "
        f"{report['warmup_s']} s warm-up; load from a separate process; server flags: "
        f"`{' '.join(s) or '(defaults)'}`)",
        "",
        "| protocol | concurrency | requests/s | images/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["server"]:
        lines.append(
            f"| {row['protocol']} | {row['concurrency']} | {row['requests_per_s']:.1f} | "
            f"{row['images_per_s']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['errors']} |"
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
    if report.get("batch_sizes"):
        lines += [
            "",
            f"Micro-batch sizes seen by the server over the whole run (garbage_batch_size): "
            f"mean {report['batch_sizes']['mean']:.1f} over {report['batch_sizes']['count']:.0f} "
            "model calls.",
        ]
    return "\n".join(lines) + "\n"


def _batch_sizes(http_port: int) -> dict[str, float] | None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("garbage_batch_size_sum", "garbage_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    if "garbage_batch_size_count" not in values or not values["garbage_batch_size_count"]:
        return None
    return {
        "count": values["garbage_batch_size_count"],
        "mean": values["garbage_batch_size_sum"] / values["garbage_batch_size_count"],
    }


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
    from components.inference import OnnxClassifier

    probe = OnnxClassifier.load(model_dir, device="cpu", intra_op_threads=1)
    report["model"] = {
        "path": str(model_dir),
        "input": f"uint8 [N, {probe.height}, {probe.width}, 3]",
    }
    report["images"] = {
        "count": len(images),
        "mean_bytes": float(np.mean([len(b) for b in images])),
        "source": str(DEV_ARCHIVE) if DEV_ARCHIVE.is_file() else "synthetic",
    }
    del probe
    print("in-process ...", file=sys.stderr, flush=True)
    report["in_process"] = in_process(model_dir, images, args.in_process_seconds)
    report["server_settings"] = ["--enable_latency_logging", "false", *args.server_arg]
    report["duration_s"], report["warmup_s"] = args.duration, args.warmup
    with running_server(
        model_dir, report["server_settings"], args.out / "serve-server.log.tmp"
    ) as (http_port, grpc_port):
        spec = {
            "archive": str(DEV_ARCHIVE),
            "images": args.images,
            "protocols": args.protocols,
            "concurrency": args.concurrency,
            "http_port": http_port,
            "grpc_port": grpc_port,
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
        report["batch_sizes"] = _batch_sizes(http_port)
    report["targets"] = verdict(report)
    report["elapsed_s"] = round(time.time() - started, 1)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
