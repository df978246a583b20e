"""Load test: concurrent clients against a real `mlflow models serve`, mixing good photos, bad
photos and requests over the row limit; prints the 5xx count, wrong answers, p50/p99 latency per
kind of request, requests/s and the serving processes' peak RSS.

    cd /where/the/store/is && MLFLOW_TRACKING_URI=sqlite:///mlflow.db \\
        /work/main/.venv/bin/python /work/main/benchmarks/load.py \\
        --model models:/landmark-classifier@champion --data ../shared/datasets/landmarks-35

`tests/test_hostile.py` runs a short version and asserts only on correctness.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import requests

from landmark.config import CHAMPION_URI, ServeConfig
from landmark.runtime.predictor import Predictor


def body(photos: list[bytes]) -> str:
    rows = [[base64.b64encode(p).decode()] for p in photos]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}})


def bad_photos(good: bytes) -> list[bytes]:
    """Photos every client sends now and then: cut, not an image, empty, a pixel bomb."""
    header = bytearray(good)
    sof = header.index(b"\xff\xc0")
    header[sof + 5 : sof + 9] = (60_000).to_bytes(2, "big") * 2  # claims 60,000 x 60,000 px
    return [good[: len(good) // 2], b"%PDF-1.4 not a photo", b"", bytes(header)]


def request_mix(good: list[tuple[bytes, str]], max_rows: int) -> list[tuple[str, str, object]]:
    """(kind, JSON body, expected): one photo answered with its label, one bad photo refused,
    one request with a row more than the endpoint answers."""
    mix = [("good", body([photo]), label) for photo, label in good]
    mix += [("bad", body([photo]), 400) for photo in bad_photos(good[0][0])]
    mix.append(("oversized", body([good[0][0]] * (max_rows + 1)), 400))
    return mix


def load(url: str, mix, clients: int, seconds: float, seed: int = 0) -> dict:
    """`clients` threads, each with its own connection, sending requests of `mix` at random
    (half of them good photos) for `seconds`. Statuses, latencies and wrong answers by kind."""
    by_kind: dict[str, list] = {}
    for item in mix:
        by_kind.setdefault(item[0], []).append(item)
    statuses: Counter = Counter()
    latencies: dict[str, list[float]] = {kind: [] for kind in by_kind}
    wrong: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        rng, session = random.Random(seed * 1000 + index), requests.Session()
        while time.monotonic() < stop:
            kind = "good" if rng.random() < 0.5 else rng.choice(sorted(by_kind))
            _, data, expected = rng.choice(by_kind[kind])
            start = time.perf_counter()
            response = session.post(url, data=data, timeout=120,
                                    headers={"Content-Type": "application/json"})  # fmt: skip
            seconds = time.perf_counter() - start
            with lock:
                statuses[response.status_code] += 1
                latencies[kind].append(seconds)
                if kind == "good":
                    label = response.ok and response.json()["predictions"][0]["label"]
                    if label != expected:
                        wrong.append(f"{response.status_code}: {response.text[:200]}")
                elif response.status_code != expected or "stack_trace" in response.text:
                    wrong.append(f"{kind} {response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"statuses": statuses, "latencies": latencies, "wrong": wrong, "seconds": seconds}


def peak_rss(pid: int) -> dict[str, int]:
    """Peak resident memory (VmHWM, bytes) of process `pid` and each of its descendants, by
    "pid command"."""
    peaks, stack = {}, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            command = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
            name = " ".join(os.path.basename(a.decode()) for a in command[:3])
            peaks[f"{current} {name}"] = int(status.split("VmHWM:")[1].split()[0]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError):
            continue
    return peaks


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(result: dict) -> None:
    statuses = result["statuses"]
    count = sum(statuses.values())
    fives = sum(n for code, n in statuses.items() if code >= 500)
    print(f"{count} requests in {result['seconds']:.0f} s ({count / result['seconds']:.1f}/s);"
          f" statuses {dict(sorted(statuses.items()))}; 5xx: {fives};"
          f" wrong answers: {len(result['wrong'])}")  # fmt: skip
    for kind, values in result["latencies"].items():
        print(f"  {kind:9s} n={len(values):5d}  p50 {percentile(values, 50) * 1000:7.1f} ms"
              f"  p99 {percentile(values, 99) * 1000:7.1f} ms")  # fmt: skip
    for line in result["wrong"][:5]:
        print("  wrong:", line)


def main() -> None:
    from serving import jpeg, serve  # this folder's serving benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data set folder (its test photos)")
    parser.add_argument("--model", default=CHAMPION_URI)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--photos", type=int, default=16, help="good photos in the mix")
    args = parser.parse_args()

    paths = sorted(Path(args.data).glob("test/*/*.jpg"))
    chosen = random.Random(0).sample(paths, args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(args.model, dst_path=tmp)
        torchscript = next(Path(local).rglob("*.pt"))
        predictor = Predictor.load(torchscript)
        photos = [jpeg(p, 1024) for p in chosen]
        good = [(p, predictor.predict([p])[0]["label"]) for p in photos]
        served = relog(torchscript, predictor.metadata, photos[0], Path(tmp) / "store")
        process, url = serve(served, Path(tmp) / "serve.log")
        try:
            mix = request_mix(good, ServeConfig().max_rows)
            print(f"model {args.model} (its TorchScript logged again by this checkout); "
                  f"{args.clients} clients for {args.seconds:.0f} s; {len(good)} good 1024-px "
                  f"JPEGs, {len(mix) - len(good)} bad or oversized requests")  # fmt: skip
            report(load(url, mix, args.clients, args.seconds))
            for name, peak in peak_rss(process.pid).items():
                print(f"peak RSS {peak / 1e6:6.0f} MB  {name}")
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the server and its workers
            process.wait(30)


def relog(torchscript: Path, metadata, example: bytes, store: Path) -> str:
    """`torchscript` logged by this checkout's code to a throw-away store; its URI. A logged
    model carries the code it was logged with (MLflow's `code_paths`), so serving a version
    logged earlier would measure that earlier code."""
    from landmark import tracking

    store.mkdir()
    os.chdir(store)  # the store's artifacts go to ./mlruns here
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run():
        return tracking.log_model(torchscript, metadata, example)


if __name__ == "__main__":
    main()
