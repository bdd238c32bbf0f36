"""tritonclient's gRPC client against the server, run as its own process by test_server.py.

tritonclient.grpc and kserve register the same protobuf symbols (package ``inference``) in
protobuf's default pool, so they cannot be imported into one process (kserve/kserve#3099); the
test suite imports kserve, hence this separate script. It prints one JSON object.

    python triton_grpc_probe.py HOST:PORT MODEL IMAGE_FILE... --pixels NPY_FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--pixels", type=Path, required=True)
    args = parser.parse_args()
    client = triton_grpc.InferenceServerClient(args.url)
    report: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "metadata": client.get_model_metadata(args.model, as_json=True),
    }
    images = [p.read_bytes() for p in args.images]
    encoded = triton_grpc.InferInput("image_bytes", [len(images)], "BYTES")
    encoded.set_data_from_numpy(np.array(images, dtype=np.object_))
    pixels = np.load(args.pixels)
    raw = triton_grpc.InferInput("image", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels)
    for name, tensor in (("bytes", encoded), ("pixels", raw)):
        result = client.infer(args.model, [tensor])
        report[name] = {
            "labels": [v.decode() for v in result.as_numpy("label")],
            "probabilities": result.as_numpy("probabilities").tolist(),
            "classes": result.get_response().outputs[2].parameters["classes"].string_param,
        }
    wrong = triton_grpc.InferInput("pixels", [1, 2, 2, 3], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 2, 2, 3), dtype=np.uint8))
    try:
        client.infer(args.model, [wrong])
        report["wrong_input"] = None
    except InferenceServerException as e:
        report["wrong_input"] = {"status": e.status(), "message": e.message()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
