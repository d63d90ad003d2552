"""Throughput and latency of the localization service (``localize.py serve``) on loopback.

    python evaluate.py --data.output_dir /tmp/town --lambdas "[0.5]" --export_bundle /tmp/town-bundle
    python benchmarks/bench_service.py --bundle /tmp/town-bundle --clients 1 2 8 --duration 20

Starts ``localize.py serve`` in a subprocess on 127.0.0.1, localizes every query of the list offline first
(``Bundle.localize`` in this process: the reference), then for each client count sends the queries round-robin
from that many concurrent clients (each waits for its answer before sending the next) for ``--duration``
seconds, and prints requests per second, p50/p95/p99 latency, the server's peak RSS, and whether every response
equals the offline result (pose to 1e-9, matches and inliers). Default queries: the embedded town's.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from fuseloc.service import post_image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM, Linux), in MiB; NaN elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def same(a: dict, b: dict) -> bool:
    pose_a, pose_b = np.r_[a["qvec"], a["tvec"]], np.r_[b["qvec"], b["tvec"]]
    return bool(np.abs(pose_a - pose_b).max() <= 1e-9) and all(a[k] == b[k] for k in ("success", "num_matches", "num_inliers"))


def run_clients(url: str, queries: list[tuple[str, bytes, str]], reference: dict[str, dict], clients: int,
                duration: float) -> dict:
    latencies: list[float] = []
    mismatches: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            name, body, camera = queries[i % len(queries)]
            i += clients
            t0 = time.perf_counter()
            status, record = post_image(url, body, timeout=120, camera=camera, name=name)
            elapsed = time.perf_counter() - t0
            with lock:
                if status != 200:
                    errors.append(f"{name}: {status} {record}")
                elif not same(record, reference[name]):
                    mismatches.append(name)
                latencies.append(elapsed)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "mismatches": len(mismatches), "errors": len(errors),
            "first_error": errors[0] if errors else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--queries", type=Path, help="hloc query list (default: the embedded town's)")
    parser.add_argument("--image_root", type=Path, help="folder of the list's names (default: <list folder>/images)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    parser.add_argument("--max_concurrency", type=int, default=2, help="the service's --max_concurrency")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    import fuseloc
    from fuseloc.data.readers.generic import read_query_list

    if args.queries is None:
        from fuseloc.data.town import TownConfig, default_scene_dir, generate_town

        root = generate_town(default_scene_dir(TownConfig()), TownConfig())
        args.queries = root / "queries_with_intrinsics.txt"
    image_root = args.image_root or args.queries.parent / "images"
    entries = read_query_list(args.queries)
    queries = [(e.name, (image_root / e.name).read_bytes(), " ".join(e.camera.to_tokens())) for e in entries]

    bundle = fuseloc.load_bundle(args.bundle)
    t0 = time.perf_counter()
    reference = {name: bundle.localize(body, camera, name=name).to_record() for name, body, camera in queries}
    offline_ms = (time.perf_counter() - t0) / len(queries) * 1000
    del bundle
    print(f"{len(queries)} queries; offline (one thread, in process): {offline_ms:.1f} ms per query")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(REPO / "localize.py"), "serve", "--bundle", str(args.bundle),
                               "--port", str(port), "--max_concurrency", str(args.max_concurrency), "--log_level", "WARNING"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print(f"the service did not start: {server.stderr.read()[-2000:] if server.stderr else ''}")
                    return 1
                time.sleep(0.2)
        print(f"service: {health['method']}, {health['points']} points, max_concurrency {args.max_concurrency}, "
              f"startup RSS {peak_rss_mb(server.pid):.0f} MiB")
        post_image(url, queries[0][1], timeout=120, camera=queries[0][2], name=queries[0][0])  # warm-up: first-call costs are not service time
        print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'peak RSS MiB':>12}  equal to offline")
        for clients in args.clients:
            row = run_clients(url, queries, reference, clients, args.duration)
            row["peak_rss_mb"] = peak_rss_mb(server.pid)
            rows.append(row)
            verdict = "all" if not row["mismatches"] and not row["errors"] else \
                f"NO: {row['mismatches']} differ, {row['errors']} errors {row['first_error']}"
            print(f"{clients:>7} {row['requests']:>8} {row['rps']:>7.2f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
                  f"{row['p99_ms']:>8.1f} {row['peak_rss_mb']:>12.0f}  {verdict}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))
    return 0 if all(not r["mismatches"] and not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
