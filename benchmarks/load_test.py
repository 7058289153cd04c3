"""Load test of ``clippy-rt serve``: N concurrent clients for a bounded number of requests
and seconds, every answer checked against a local engine's labels.

    # against a running server (loopback only)
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 16 --requests 2000

    # start the server itself (inside a loopback-only network namespace, as Ray binds the
    # machine's address otherwise), then stop it with SIGTERM at the end
    unshare -n sh -c 'ip link set lo up && python benchmarks/load_test.py --start-server demo \
        --server-args "--cpus-per-replica 1 --max-batch 16" --clients 16 --requests 2000'

Reports throughput, latency p50/p95/p99 (client side: request sent to answer parsed),
errors (HTTP error answers), lost requests (sent, never answered: connection dropped or
timed out), mismatches (answers whose labels differ from the local engine's for the same
image and prompts), the batch sizes the replica saw, the CPU seconds of each process in the
namespace, and, for comparison (``--baseline``), the local engine's best batched ``segment``
throughput on this machine (decoded images in, label tensors out: no request decoding or
reply encoding) and the same request work the replica does (``Replica.parse`` and
``Replica.run_batch`` plus JSON encoding, at that best batch size and thread count) run in
this process without Ray or HTTP.
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
MAX_REQUESTS = 100_000
MAX_DURATION_S = 3600.0
START_TIMEOUT_S = 300.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server URL, loopback only")
    parser.add_argument("--start-server", metavar="MODEL", default=None,
                        help="start `clippy-rt serve MODEL` on --url's port first, stop it at the end")
    parser.add_argument("--server-args", default="", help="extra arguments for the started server")
    parser.add_argument("--reference-model", default=None,
                        help="model for the local reference labels (default: --start-server's, else 'demo')")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--requests", type=int, default=2000, help=f"requests in all, at most {MAX_REQUESTS}")
    parser.add_argument("--duration", type=float, default=600.0,
                        help=f"stop sending after this many seconds, at most {MAX_DURATION_S:g} (default: 600)")
    parser.add_argument("--warmup", type=int, default=32, help="untimed requests first (default: 32)")
    parser.add_argument("--images", nargs="*", default=None, help="images to send (default: examples/*.png)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the local engine's best batched segment throughput first (default: on)")
    parser.add_argument("--baseline-threads", default="1,2",
                        help="torch thread counts to try for the local baseline; the best counts (default: 1,2)")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    if not _is_loopback(host):
        parser.error(f"--url must point at this machine's loopback (127.0.0.1, ::1, localhost), got {host!r}")
    if not 1 <= args.clients <= 1024:
        parser.error("--clients must be in [1, 1024]")
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be in [1, {MAX_REQUESTS}]")
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    return args


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prompts_for(model: str):
    """The demo model's evaluation prompts; the shape names for other models."""
    from clippy_rt.datasets.synthetic import class_names, eval_prompts

    return eval_prompts() if model == "demo" else class_names()


def baseline(model: str, images, prompts, thread_counts: List[int], seconds: float = 4.0) -> Dict[str, object]:
    """Best frames/s of the local engine's batched ``segment`` over batch sizes 1-32 and
    the given torch thread counts."""
    import torch

    import clippy_rt

    engine = clippy_rt.load(model)
    rates = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch in (1, 2, 4, 8, 16, 32):
            frames = [images[i % len(images)] for i in range(batch)]
            engine.segment(frames, prompts)
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                engine.segment(frames, prompts)
                done += batch
            rates[(threads, batch)] = done / (time.perf_counter() - start)
    threads, batch = max(rates, key=rates.get)
    return {"frames_per_s": {f"threads {t}, batch {b}": round(v, 2) for (t, b), v in rates.items()},
            "best_threads": threads, "best_batch": batch, "best_frames_per_s": round(rates[(threads, batch)], 2)}


def replica_baseline(model: str, payloads: List[bytes], prompts, threads: int, batch: int,
                     seconds: float = 4.0) -> Dict[str, object]:
    """Requests/s of the server's own request work without Ray or HTTP, in this process:
    ``Replica.parse`` of each JSON body (base64 and PNG decode) and ``Replica.run_batch``
    (engine call, labels PNG, fractions) on batches of ``batch``, with ``threads`` torch
    threads, as the local baseline's best; plus JSON encoding of each reply."""
    import base64

    import torch

    import clippy_rt
    from clippy_rt.serve.replica import Replica

    torch.set_num_threads(threads)
    replica = Replica(clippy_rt.load(model))
    bodies = [json.dumps({"image": base64.b64encode(payloads[i % len(payloads)]).decode("ascii"),
                          "prompts": prompts}).encode() for i in range(batch)]

    def one_batch() -> None:
        requests = [replica.parse("segment", json.loads(body)) for body in bodies]
        for _, reply in replica.run_batch(requests):
            json.dumps(reply)

    one_batch()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one_batch()
        done += batch
    rate = done / (time.perf_counter() - start)
    return {"threads": threads, "batch": batch, "requests_per_s": round(rate, 2),
            "ms_per_request": round(1000.0 / rate, 3)}


def namespace_cpu_seconds() -> Dict[str, float]:
    """CPU seconds (user + system) used so far by each process in this network namespace,
    keyed by "pid command"; inside a loopback-only namespace, that is the server's processes
    and this one, and none of the machine's other work."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        own = os.readlink("/proc/self/ns/net")
    except OSError:
        return {}
    usage = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != own:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        # Fields after the command name: utime and stime are the 12th and 13th.
        usage[f"{entry.name} {command[:70]}"] = (int(fields[11]) + int(fields[12])) / ticks
    return usage


def cpu_used_during(before: Dict[str, float], after: Dict[str, float], top: int = 8) -> Dict[str, float]:
    """The ``top`` processes by CPU seconds used between two namespace_cpu_seconds() calls."""
    used = {name: round(seconds - before.get(name, 0.0), 2) for name, seconds in after.items()}
    return dict(sorted(((n, v) for n, v in used.items() if v > 0), key=lambda item: -item[1])[:top])


def start_server(model: str, url: str, extra: str) -> subprocess.Popen:
    port = urlsplit(url).port or 80
    command = [sys.executable, "-m", "clippy_rt.cli.main", "serve", model, "--host", "127.0.0.1",
               "--port", str(port), *shlex.split(extra)]
    print(f"starting: {' '.join(command)}", file=sys.stderr, flush=True)
    return subprocess.Popen(command, cwd=REPO)


def wait_healthy(client, server: Optional[subprocess.Popen]) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before answering")
        try:
            return client.health()
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit(f"no answer from {client.url} within {START_TIMEOUT_S:g} s")
            time.sleep(1.0)


def run_load(url: str, payloads: List[bytes], references, prompts, clients: int, total: int,
             duration: float, timeout: float) -> Dict[str, object]:
    """Send ``total`` requests (or stop after ``duration`` s) from ``clients`` threads."""
    from clippy_rt.serve.client import Client
    from clippy_rt.errors import InputError, ServerError

    lock = threading.Lock()
    counter = {"next": 0}
    latencies: List[float] = []
    outcome = {"ok": 0, "errors": 0, "lost": 0, "mismatched": 0}
    messages: Dict[str, int] = {}
    stop_at = time.monotonic() + duration

    def worker() -> None:
        client = Client(url, timeout=timeout, retries=0)
        while True:
            with lock:
                index = counter["next"]
                if index >= total or time.monotonic() >= stop_at:
                    return
                counter["next"] += 1
            image = index % len(payloads)
            start = time.perf_counter()
            try:
                result = client.segment(payloads[image], prompts)
                kind = "ok" if bool((result.labels == references[image]).all()) else "mismatched"
                message = None
            except InputError as exc:  # a 4xx answer
                kind, message = "errors", str(exc)
            except ServerError as exc:
                kind = "errors" if "server error" in str(exc) else "lost"
                message = str(exc)
            elapsed = (time.perf_counter() - start) * 1000.0
            with lock:
                outcome[kind] += 1
                if kind in ("ok", "mismatched"):
                    latencies.append(elapsed)
                if message:
                    messages[message[:160]] = messages.get(message[:160], 0) + 1

    def progress() -> None:
        while any(thread.is_alive() for thread in threads):
            time.sleep(5.0)
            with lock:
                print(f"  {counter['next']}/{total} sent, {outcome['ok']} ok", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    reporter = threading.Thread(target=progress, daemon=True)
    reporter.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    from clippy_rt.bench.stats import summarize

    answered = outcome["ok"] + outcome["mismatched"]
    stats = summarize(latencies) if latencies else None
    return {"sent": counter["next"], **outcome, "wall_s": round(wall, 2),
            "throughput_per_s": round(answered / wall, 2),
            "latency_ms": {"p50": round(stats.median, 1), "p95": round(stats.p95, 1), "p99": round(stats.p99, 1),
                           "max": round(stats.max, 1)} if stats else None,
            "error_messages": messages}


MARKDOWN_HEADER = ("| date (UTC) | server args | clients | requests | throughput /s | local best /s | ratio "
                   "| p50 ms | p95 ms | p99 ms | p99/p50 | errors | lost | mismatched | load avg (1 min) before, after |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(report: Dict[str, object], server_args: str) -> str:
    """One row of RESULTS.md's serving table (header: MARKDOWN_HEADER)."""
    load = report["load"]
    latency = load["latency_ms"] or {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    local = report.get("local_baseline") or {}
    before, after = report["environment_before"], report.get("environment_after") or {}
    loads = [str((env.get("load_average") or ["?"])[0]) for env in (before, after)]
    cells = [before["date"][:16].replace("T", " "), f"`{server_args}`" if server_args else "(defaults)",
             report["clients"], load["sent"], load["throughput_per_s"], local.get("best_frames_per_s", "-"),
             report.get("throughput_vs_local", "-"), latency["p50"], latency["p95"], latency["p99"],
             round(latency["p99"] / latency["p50"], 2) if latency["p50"] else "-", load["errors"], load["lost"],
             load["mismatched"], ", ".join(loads)]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from clippy_rt.bench.environment import collect_environment
    from clippy_rt.serve.client import Client
    from clippy_rt.images import load_image
    from clippy_rt.serve.protocol import encode_image_file

    paths = [Path(p) for p in (args.images or sorted(glob.glob(str(REPO / "examples" / "*.png"))))]
    if not paths:
        raise SystemExit("no images: pass --images")
    model = args.reference_model or args.start_server or "demo"
    prompts = prompts_for(model)
    pictures = [load_image(p) for p in paths]
    report: Dict[str, object] = {"environment_before": collect_environment(), "model": model,
                                 "clients": args.clients, "requests": args.requests, "images": len(paths)}
    if args.baseline:
        print("measuring the local engine's batched segment throughput", file=sys.stderr, flush=True)
        thread_counts = [int(part) for part in args.baseline_threads.split(",") if part.strip()]
        report["local_baseline"] = baseline(model, pictures, prompts, thread_counts)
    import clippy_rt

    reference_engine = clippy_rt.load(model)
    references = [reference_engine.segment(p, prompts).labels for p in pictures]
    del reference_engine
    payloads = [encode_image_file(p) for p in paths]
    if args.baseline:
        local = report["local_baseline"]
        report["replica_in_process"] = replica_baseline(model, payloads, prompts, local["best_threads"],
                                                        local["best_batch"])

    server = start_server(args.start_server, args.url, args.server_args) if args.start_server else None
    try:
        probe = Client(args.url, timeout=10, retries=0)
        report["health"] = wait_healthy(probe, server)
        if args.warmup:
            run_load(args.url, payloads, references, prompts, args.clients, args.warmup, 120.0, args.timeout)
        stats_before = probe.stats()
        print(f"load: {args.clients} clients, {args.requests} requests, at most {args.duration:g} s",
              file=sys.stderr, flush=True)
        cpu_before = namespace_cpu_seconds()
        report["load"] = run_load(args.url, payloads, references, prompts, args.clients, args.requests,
                                  args.duration, args.timeout)
        report["cpu_seconds_during_load"] = cpu_used_during(cpu_before, namespace_cpu_seconds())
        report["replica_stats_before"] = stats_before
        report["replica_stats_after"] = probe.stats()
        report["environment_after"] = collect_environment()
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                report["server_exit_code"] = server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
                report["server_exit_code"] = "killed"
    load = report["load"]
    if "local_baseline" in report:
        best = report["local_baseline"]["best_frames_per_s"]
        report["throughput_vs_local"] = round(load["throughput_per_s"] / best, 3) if best else None
    if args.json:
        from clippy_rt.formats.atomic import atomic_write

        text = json.dumps(report, indent=1).encode()
        atomic_write(args.json, lambda handle: handle.write(text))
    print(json.dumps({key: report.get(key) for key in
                      ("load", "local_baseline", "replica_in_process", "throughput_vs_local", "replica_stats_after",
                       "cpu_seconds_during_load")}, indent=1))
    print(MARKDOWN_HEADER)
    print(markdown_row(report, args.server_args))
    return 0 if load["errors"] == 0 and load["lost"] == 0 and load["mismatched"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
