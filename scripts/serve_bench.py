"""Latency of `jaxmnist.serve`: the real command in its own process, asked over loopback HTTP.

    python scripts/serve_bench.py                                   # cnn, fast, resnet; JSON + markdown table
    python scripts/serve_bench.py --networks cnn --requests 100 --out /tmp/serve.json

For each network the server gets freshly initialised weights (the cost of a prediction does not depend on their
values) through --torch-state-dict, and is asked with what the page sends: a 280x280 PNG of a drawn digit (real
MNIST test digits, enlarged). One client asks --requests times in a row (the latency of one user drawing);
then --clients threads ask --requests times in all (the server batches what arrives together). Every answer must
be 200. Time it on a quiet machine: the JSON records the CPU and the load average before and after.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)
import numpy as np
from PIL import Image

import draw_digits
from jaxmnist import data as data_lib
from jaxmnist import host, interop, models, weights

ROOT = Path(__file__).resolve().parents[1]


def start_server(network: str, workdir: Path) -> tuple[subprocess.Popen, tuple[str, int], str]:
    """`python -m jaxmnist.serve` on random weights of `network`; (process, address, its start line)."""
    pth = interop.save_torch(workdir / f"{network}.pth", network, weights.initialised(network).variables)
    cmd = [sys.executable, "-m", "jaxmnist.serve", "--torch-state-dict", str(pth), "--model", network,
           "--port", "0", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.readline()
    ready = proc.stdout.readline()
    if "serving on http://" not in ready:
        proc.kill()
        raise SystemExit(f"error: the {network} server did not start: {proc.stderr.read().strip()[-300:]}")
    host_port = ready.split("serving on http://")[1].split("/")[0]
    name, port = host_port.rsplit(":", 1)
    return proc, (name, int(port)), ready.strip()


def ask(address, body: bytes, conn: http.client.HTTPConnection | None = None) -> tuple[float, int]:
    """(seconds, class) of one POST /predict on `conn` (kept alive) or a fresh connection."""
    conn = conn or http.client.HTTPConnection(*address, timeout=60)
    t0 = time.perf_counter()
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
    r = conn.getresponse()
    answer = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise SystemExit(f"error: the server answered {r.status}: {answer[:200]!r}")
    return dt, json.loads(answer)["class"]


def stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"n": len(ms), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())}  # fmt: skip


def health(address) -> dict:
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def measure(network: str, bodies: list[bytes], requests: int, clients: int, workdir: Path) -> dict:
    t0 = time.perf_counter()
    proc, address, ready_line = start_server(network, workdir)
    start_s = time.perf_counter() - t0
    try:
        conn = http.client.HTTPConnection(*address, timeout=60)
        for body in bodies[:5]:  # the first requests of a connection (and of PIL's decoders) are not the steady state
            ask(address, body, conn)
        one = [ask(address, bodies[i % len(bodies)], conn)[0] for i in range(requests)]
        before = health(address)
        t0 = time.perf_counter()

        def client(i):  # each request on its own connection, as separate users would
            return ask(address, bodies[i % len(bodies)])[0]

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            many = list(pool.map(client, range(requests)))
        wall = time.perf_counter() - t0
        after = health(address)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    record = {
        "network": network,
        "server_start_s": start_s,
        "ready_line": ready_line,
        "one_client": stats(one),
        "concurrent": {
            **stats(many),
            "clients": clients,
            "wall_s": wall,
            "requests_per_s": requests / wall,
            "batches": after["batches"] - before["batches"],
        },
        "compiles_while_serving": after["compiles_since_ready"],
    }
    print(f"{network}: one client median {record['one_client']['median_ms']:.1f} ms, p99 "
          f"{record['one_client']['p99_ms']:.1f} ms; {clients} clients {record['concurrent']['requests_per_s']:.0f} "
          f"req/s, median {record['concurrent']['median_ms']:.1f} ms, p99 {record['concurrent']['p99_ms']:.1f} ms, "
          f"{record['concurrent']['batches']} batches", flush=True)  # fmt: skip
    return record


def table(doc: dict) -> str:
    clients = doc["settings"]["clients"]
    rows = [f"| network | one client: median ms | p99 ms | {clients} clients: req/s | median ms | p99 ms | batches |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in doc["results"]:
        one, many = r["one_client"], r["concurrent"]
        rows.append(f"| {r['network']} | {one['median_ms']:.1f} | {one['p99_ms']:.1f} | {many['requests_per_s']:.0f} "
                    f"| {many['median_ms']:.1f} | {many['p99_ms']:.1f} | {many['batches']} |")  # fmt: skip
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--networks", default="cnn,fast,resnet", help="comma-separated, of " + ", ".join(models.MODELS))
    p.add_argument("--requests", type=int, default=200, help="per measurement (default 200)")
    p.add_argument("--clients", type=int, default=16, help="threads of the concurrent measurement (default 16)")
    p.add_argument("--out", default="benchmarks/serve-cpu.json")
    args = p.parse_args(argv)
    networks = args.networks.split(",")
    unknown = [n for n in networks if n not in models.MODELS]
    if unknown or args.requests < 10 or args.clients < 1:
        print(f"error: unknown networks {unknown}" if unknown else "error: --requests >= 10, --clients >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    mnist = data_lib.load("mnist", progress=False)
    bodies = [draw_digits.digit_file(d, mode="RGBA") for d in mnist.test_images[:50]]
    doc = {
        "machine": host.machine(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "pillow": Image.__version__},
        "load_average_start": host.load_average(),
        "settings": {"requests": args.requests, "clients": args.clients, "body": "280x280 RGBA PNG"},
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for network in networks:
            doc["results"].append(measure(network, bodies, args.requests, args.clients, Path(tmp)))
    doc["load_average_end"] = host.load_average()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\n{doc['machine']}; load average {doc['load_average_start']} -> {doc['load_average_end']}\n")
    print(table(doc))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
