"""Serving latency and throughput: a real `mlflow models serve` process vs the TorchScript file.

Starts `mlflow models serve` on the model (default: the registry's champion) on 127.0.0.1 and
measures, interleaved with the same work done in-process by the exported TorchScript file:
p50/p95 latency of one-photo requests (a 448-px JPEG and a 12-megapixel JPEG, both made from a
test photo of the data set by resizing) and photos/s with batches of 16.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python benchmarks/serving.py \
        --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import requests
from PIL import Image

from landmark.serving import Predictor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(photo: Path, long_side: int) -> bytes:
    img = Image.open(photo).convert("RGB")
    scale = long_side / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def body(photos: list[bytes]) -> dict:
    data = [[base64.b64encode(p).decode()] for p in photos]
    return {"dataframe_split": {"columns": ["image"], "data": data}}


def serve(model_uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        [
            "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port),
        ],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                return process, f"{url}/invocations"
        except requests.ConnectionError:
            time.sleep(0.5)
    raise TimeoutError(log.read_text()[-2000:])


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data set folder (a test photo is used)")
    parser.add_argument("--model", default="models:/landmark-classifier@champion")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()

    test_photos = sorted(Path(args.data).glob("test/*/*.jpg"))
    photos = {"448-px JPEG": jpeg(test_photos[0], 448), "12-MP JPEG": jpeg(test_photos[0], 4240)}
    batch = [jpeg(p, 448) for p in test_photos[:16]]
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(args.model, dst_path=tmp)
        predictor = Predictor.load(next(Path(local).rglob("*.pt")))
        process, url = serve(args.model, Path(tmp) / "serve.log")
        session = requests.Session()  # a client keeps its connection open, as real ones do
        try:
            print(f"model {args.model}; {len(test_photos)} test photos; torch threads", end=" ")
            print(f"{os.cpu_count()} CPUs")
            for name, photo in photos.items():
                print(f"{name} ({len(photo) / 1e6:.2f} MB), one photo per request, seconds:")
                server = timed(lambda p=photo: session.post(url, json=body([p])), args.repeats)
                local_times = timed(lambda p=photo: predictor.predict([p]), args.repeats)
                for label, times in (("endpoint", server), ("in-process", local_times)):
                    p50, p95 = percentile(times, 50), percentile(times, 95)
                    print(f"  {label:10s} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms")
                ratio = percentile(server, 50) / percentile(local_times, 50)
                print(f"  endpoint p50 / in-process p50 = {ratio:.2f}")
            rounds = max(3, args.repeats // 8)
            server = timed(lambda: session.post(url, json=body(batch)), rounds)
            local_times = timed(lambda: predictor.predict(batch), rounds)
            print("batches of 16 448-px JPEGs, photos/s:")
            print(f"  endpoint {16 / statistics.median(server):.1f}")
            print(f"  in-process {16 / statistics.median(local_times):.1f}")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()


if __name__ == "__main__":
    main()
