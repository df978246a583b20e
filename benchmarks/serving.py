"""Serving latency and throughput: a real `mlflow models serve` process vs the TorchScript file.

Starts `mlflow models serve` on the model (default: the registry's champion) on 127.0.0.1 and
measures, taking turns with the same work done in-process by the exported TorchScript file:
p50/p95 latency of one-photo requests (a 448-px JPEG and a 12-megapixel JPEG, both made from a
test photo of the data set by resizing) and photos/s with batches of 16. Latency is measured
twice: requests arriving apart (`--pause`; the latency a lone request meets) and back to back in
blocks of 10 (one client keeping the server busy; the client shares the machine's cores).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python benchmarks/serving.py \
        --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import requests
import torch
from PIL import Image

from landmark.config import CHAMPION_URI
from landmark.runtime.predictor import Predictor


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


def taking_turns(
    calls: dict[str, Callable[[], object]], repeats: int, pause: float, block: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function: `block` calls each in turn until `repeats` each.

    Taking turns cancels the drift of a shared machine. With `pause` seconds before each call
    and `block=1`, every call meets an idle machine, as a lone request does; with no pause and
    longer blocks, calls follow each other back to back, as under a steady single client.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():  # warm-up
        fn()
        fn()
    while len(times[next(iter(calls))]) < repeats:
        for name, fn in calls.items():
            for _ in range(block):
                time.sleep(pause)
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def percentile(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data set folder (a test photo is used)")
    parser.add_argument("--model", default=CHAMPION_URI)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between requests")
    args = parser.parse_args()

    test_photos = sorted(Path(args.data).glob("test/*/*.jpg"))
    photos = {"448-px JPEG": jpeg(test_photos[0], 448), "12-MP JPEG": jpeg(test_photos[0], 4240)}
    batch = [jpeg(p, 448) for p in test_photos[:16]]
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(args.model, dst_path=tmp)
        predictor = Predictor.load(next(Path(local).rglob("*.pt")))
        process, url = serve(args.model, Path(tmp) / "serve.log")
        session = requests.Session()  # a client keeps its connection open, as real ones do

        def post(photos: list[bytes]) -> Callable[[], object]:
            data = json.dumps(body(photos))  # encoded once: the client's work is not timed
            headers = {"Content-Type": "application/json"}
            return lambda: session.post(url, data=data, headers=headers).raise_for_status()

        try:
            print(f"model {args.model}; {os.cpu_count()} CPUs; torch threads", end=" ")
            print(f"{torch.get_num_threads()}; {args.repeats} requests each, taking turns")
            for name, photo in photos.items():
                print(f"{name} ({len(photo) / 1e6:.2f} MB), one photo per request:")
                calls = {
                    "endpoint": post([photo]),
                    "in-process": lambda p=photo: predictor.predict([p]),
                }
                for label, pause, block in (
                    (f"{args.pause * 1000:.0f} ms apart", args.pause, 1),
                    ("back to back", 0, 10),
                ):
                    times = taking_turns(calls, args.repeats, pause, block)
                    for side, ts in times.items():
                        p50, p95 = percentile(ts, 50) * 1000, percentile(ts, 95) * 1000
                        print(f"  {label:12s} {side:10s} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")
                    ratio = percentile(times["endpoint"], 50) / percentile(times["in-process"], 50)
                    print(f"  {label:12s} endpoint p50 / in-process p50 = {ratio:.2f}")
            calls = {"endpoint": post(batch), "in-process": lambda: predictor.predict(batch)}
            times = taking_turns(calls, max(3, args.repeats // 8), 0)
            print("batches of 16 448-px JPEGs, photos/s:")
            for side, ts in times.items():
                print(f"  {side:10s} {16 / statistics.median(ts):.1f}")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()


if __name__ == "__main__":
    main()
