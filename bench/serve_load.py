r"""The model server under load: concurrent clients, latency percentiles, errors, memory, a replica killed.

    python bench/serve_load.py --checkpoint_path=../shared/data/camvid_backbone \
        --images=../shared/data/camvid/val [--clients=8 --requests=2000 --max_seconds=900] \
        [--replicas=1,2 --batching=on,off] [--kill]

Exports the checkpoint (``export_model``'s code, single scale) into a temporary folder, then for each
(replicas, batching) pair starts ``deeplab_dpc.serve``'s application on 127.0.0.1 (a local Ray), warms
every replica, and sends ``--requests`` ``:predict`` requests of one CamVid image each (PNG, b64, as
``tools/serving_client`` sends them) from ``--clients`` threads, stopping early at ``--max_seconds``.
Prints a markdown row per run: requests answered, errors (non-200 after retries), retries, throughput,
p50/p95/p99 latency, and the replicas' resident memory (RSS of the ``ServeReplica`` processes) before
and after. With ``--kill``, one more run with 2 replicas where one replica process is killed (SIGKILL)
halfway: a client retries a failed request (a 5xx or a dropped connection) up to 5 times, and the row
says how many retries that took and whether every request was answered. Run it with the machine to
itself: the figures are timings.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def replica_processes() -> list[int]:
    """PIDs of Ray Serve replica actors on this machine (their command line names ServeReplica)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if b"ServeReplica" in f.read():
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def post(url: str, body: bytes, retries: int) -> tuple[int, int, float]:
    """(status, retries used, seconds) of one request, retried on a 5xx or a dropped connection."""
    start = time.perf_counter()
    for attempt in range(retries + 1):
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
                return response.status, attempt, time.perf_counter() - start
        except urllib.error.HTTPError as error:
            status = error.code
            if status < 500:
                return status, attempt, time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            status = 0
        time.sleep(0.2 * (attempt + 1))
    return status, retries, time.perf_counter() - start


def percentile(values, q):
    import numpy as np  # noqa: PLC0415

    return float(np.percentile(values, q)) if values else float("nan")


def run_load(url, bodies, clients, requests, max_seconds, retries, kill_at=None):
    latencies, statuses, used = [], [], [0]
    lock = threading.Lock()
    deadline = time.time() + max_seconds
    killed = []

    def one(i):
        if time.time() > deadline:
            return
        if kill_at is not None and i == kill_at and not killed:
            pids = replica_processes()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
        status, attempts, seconds = post(url, bodies[i % len(bodies)], retries)
        with lock:
            statuses.append(status)
            latencies.append(seconds)
            used[0] += attempts

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {
        "answered": sum(s == 200 for s in statuses),
        "sent": len(statuses),
        "errors": sum(s != 200 for s in statuses),
        "retries": used[0],
        "wall_s": wall,
        "per_s": len(statuses) / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
        "killed": killed,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--images", required=True, help="a folder of PNG/JPEG images (CamVid val)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max_seconds", type=float, default=900)
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--batching", default="on,off")
    parser.add_argument("--max_batch_size", type=int, default=4)
    parser.add_argument("--batch_wait_timeout_ms", type=float, default=10)
    parser.add_argument("--kill", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from deeplab_dpc.export import export_lib  # noqa: PLC0415
    from deeplab_dpc.serving import app as serving_app  # noqa: PLC0415

    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".png", ".jpg", ".jpeg")))
    bodies = []
    for name in names:
        with open(os.path.join(args.images, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        bodies.append(json.dumps({"instances": [{"b64": data}]}).encode())
    with tempfile.TemporaryDirectory() as tmp:
        export_path = os.path.join(tmp, "1")
        export_lib.run_export(export_lib.ExportConfig(checkpoint_path=args.checkpoint_path, export_path=export_path))
        runs = [(int(r), b) for r in args.replicas.split(",") for b in args.batching.split(",")]
        if args.kill:
            runs.append((2, "kill"))
        print(f"command: python bench/serve_load.py {' '.join(sys.argv[1:] if argv is None else argv)}")
        print(
            f"{os.cpu_count()} CPUs; {len(bodies)} images from {args.images} ({args.clients} clients, "
            f"{args.requests} requests a run, at most {args.max_seconds:.0f} s)\n"
        )
        print("| replicas | batching | answered / sent | errors | retries | req/s | p50 ms | p95 ms | p99 ms "
              "| replica RSS MB before -> after |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for replicas, batching in runs:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            config = serving_app.ServeConfig(
                export_path=export_path,
                port=port,
                num_replicas=replicas,
                max_batch_size=1 if batching == "off" else args.max_batch_size,
                batch_wait_timeout_ms=args.batch_wait_timeout_ms,
                replica_threads=max(1, (os.cpu_count() or 2) // replicas),
            )
            serving_app.start(config)
            url = f"http://127.0.0.1:{port}/v1/models/deeplab:predict"
            run_load(url, bodies, args.clients, 4 * args.clients, 120, 5)  # warm every replica
            before = rss_mb(replica_processes())
            kill_at = args.requests // 2 if batching == "kill" else None
            result = run_load(url, bodies, args.clients, args.requests, args.max_seconds, 5, kill_at)
            after = rss_mb(replica_processes())
            print(
                f"| {replicas} | {'on, one replica killed halfway' if batching == 'kill' else batching} | "
                f"{result['answered']} / {result['sent']} | {result['errors']} | {result['retries']} | "
                f"{result['per_s']:.1f} | {result['p50_ms']:.0f} | {result['p95_ms']:.0f} | "
                f"{result['p99_ms']:.0f} | {before:.0f} -> {after:.0f} |",
                flush=True,
            )
            serving_app.stop()


if __name__ == "__main__":
    main()
