"""Load test of `transferlab serve` on localhost: requests/s and p50/p95 latency with batching off
(--batch-size 1) and on (--batch-size 8), with PyTorch and with --onnx, against a plain loop
calling ImageClassifier.predict on one image at a time.

Each configuration starts its own server, warms it up, then sends a fixed number of requests (one
hymenoptera val photo each, as a multipart upload) from N concurrent clients and stops. The
clients run in this process and share the machine's cores with the server, as a client on the
same laptop would: run the script alone, and compare the ratios within one run.

    python benchmarks/serve.py [--data DIR] [--run RUN] [--requests 240] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = [("pytorch", 1), ("pytorch", 8), ("onnx", 1), ("onnx", 8)]


def make_run(data: Path, root: Path) -> Path:
    """A frozen-backbone run (one epoch, twelve images a class): what is served matters, not how
    well it learned. Not a features run, whose predict() would read cached features."""
    import shutil

    import transferlab

    subset = root / "data"
    for cls in ("ants", "bees"):
        (subset / cls).mkdir(parents=True)
        for f in sorted((data / "train" / cls).glob("*.jpg"))[:12]:
            shutil.copy(f, subset / cls / f.name)
    return transferlab.train(str(subset), strategy="frozen", epochs=1, out=root / "runs", name="served",
                             progress=False).path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_test(url: str, photos: list[tuple[str, bytes]], requests: int, clients: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                name, data = photos[k % len(photos)]
                start = time.perf_counter()
                reply = http.post("/predict", files=[("file", (name, data, "image/jpeg"))])
                took = time.perf_counter() - start
                with lock:
                    (latencies if reply.status_code == 200 else failures).append(took if reply.status_code == 200
                                                                                 else reply.text)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return {"rps": requests / wall, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}


def serve(run: Path, engine: str, batch: int):
    command = [sys.executable, "-m", "transferlab", "-q", "serve", str(run), "--port", "0", "--no-access-log",
               "--batch-size", str(batch)] + (["--onnx"] if engine == "onnx" else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        found = re.search(r"at (http://[\d.]+:\d+)/", line)
        if found:
            url = found[1]
            break
    else:
        raise RuntimeError(f"the server did not start: {process.wait()}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its pipe drained
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server never answered /health")


def stop(process) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def plain_loop(run: Path, files: list[Path], requests: int) -> dict:
    from transferlab import ImageClassifier

    clf = ImageClassifier.load(run)
    clf.progress = False
    for f in files[:4]:
        clf.predict([str(f)])  # warm-up, as the servers get
    latencies = []
    started = time.perf_counter()
    for k in range(requests):
        t = time.perf_counter()
        clf.predict([str(files[k % len(files)])])
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return {"rps": requests / wall, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "hymenoptera"), help="hymenoptera (train/ and val/)")
    parser.add_argument("--run", help="serve this run instead of training a small one")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    data = Path(args.data)
    files = sorted((data / "val").rglob("*.jpg"))
    photos = [(f.name, f.read_bytes()) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else make_run(data, Path(tmp))
        print(f"run {run}; {args.requests} requests from {args.clients} clients, {len(files)} photos; "
              f"{os.cpu_count()} cores", flush=True)
        rows = [("plain loop: ImageClassifier.predict, one image", "-", plain_loop(run, files, args.requests))]
        print(f"  done: {rows[0][0]}", flush=True)
        for engine, batch in CONFIGS:
            process, url = serve(run, engine, batch)
            try:
                load_test(url, photos, 2 * args.clients, args.clients)  # warm-up
                rows.append((f"serve {engine}", str(batch), load_test(url, photos, args.requests, args.clients)))
            finally:
                stop(process)
            print(f"  done: serve {engine} --batch-size {batch}", flush=True)
    base = rows[0][2]["rps"]
    print("\n| configuration | --batch-size | requests/s | x plain loop | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|")
    for name, batch, r in rows:
        print(f"| {name} | {batch} | {r['rps']:.1f} | {r['rps'] / base:.2f} | {1000 * r['p50']:.0f} | "
              f"{1000 * r['p95']:.0f} |")


if __name__ == "__main__":
    main()
