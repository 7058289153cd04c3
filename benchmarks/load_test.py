"""Load test of ``clippy-rt serve``: N concurrent clients for a bounded number of frames
and seconds per protocol, every answer checked against a local engine's labels.

    # against a running server (loopback only; several replicas: their URLs, comma-separated)
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 16 --requests 2000

    # start the server itself (inside a loopback-only network namespace, as Ray binds the
    # machine's address otherwise), then stop it with SIGTERM at the end
    unshare -n sh -c 'ip link set lo up && python benchmarks/load_test.py --start-server demo \
        --server-args "--cpus-per-replica 1 --batch-wait-ms 25" --clients 16 --requests 2000'

Each protocol of ``--protocols`` runs in turn against the same server, with the same
clients and frames: ``json`` (base64 PNG in a JSON body, labels PNG back), ``binary`` (the
PNG file as a binary frame, raw labels back), ``binary-raw`` (decoded uint8 RGB frames),
``binary-multi`` (``--frames-per-request`` raw frames per request) and ``session`` (one
``Client.stream`` session per client, ``--frames-per-request`` raw frames in flight, each
answered alone; latency per frame). For each it reports
frames/s, latency p50/p95/p99 per request (client side: request sent to answer parsed),
errors (HTTP error answers), lost requests (sent, never answered: connection dropped or
timed out), mismatches (frames whose labels differ from the local engine's for the same
image and prompts), the batch sizes the replica saw and the CPU seconds of each process in
the namespace. For comparison (``--baseline``) the local engine's best batched throughput
(``segment`` on a list of frames, or its ``stream`` with chunks of the batch size, whichever
is faster) on this machine is measured in the same run: every setting before the server
starts, then the best setting again right before each protocol, after the last one, and
after the server stopped (decoded images in, label tensors out: no request decoding or reply
encoding). Each protocol's ratio (``vs_local``) is against the higher of the measurements
just before and just after it, so a machine whose speed drifts over minutes compares like
with like; ``vs_run_best`` is against the highest measurement of the whole run. The same request
work the replica does for JSON (``Replica.parse`` and ``Replica.run_batch`` plus JSON
encoding, at that best batch size and thread count) is also run in this process without Ray
or HTTP.
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
PROTOCOLS = ("json", "binary", "binary-raw", "binary-multi", "session")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000",
                        help="server URL (several replicas: their URLs, comma-separated), loopback only")
    parser.add_argument("--start-server", metavar="MODEL", default=None,
                        help="start `clippy-rt serve MODEL` on --url's port first, stop it at the end")
    parser.add_argument("--server-args", default="", help="extra arguments for the started server")
    parser.add_argument("--reference-model", default=None,
                        help="model for the local reference labels (default: --start-server's, else 'demo')")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--requests", type=int, default=2000,
                        help=f"frames per protocol, at most {MAX_REQUESTS} (default: 2000)")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help=f"protocols to measure, in this order (default: {','.join(PROTOCOLS)})")
    parser.add_argument("--frames-per-request", type=int, default=4,
                        help="frames per binary-multi request, and frames in flight per session (default: 4)")
    parser.add_argument("--duration", type=float, default=600.0,
                        help=f"stop sending after this many seconds, at most {MAX_DURATION_S:g} (default: 600)")
    parser.add_argument("--warmup", type=int, default=32, help="untimed requests first (default: 32)")
    parser.add_argument("--images", nargs="*", default=None, help="images to send (default: examples/*.png)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the local engine's best batched segment / stream throughput first "
                             "(default: on)")
    parser.add_argument("--baseline-threads", default="1",
                        help="torch thread counts to try for the local baseline, the best counts; give the "
                             "replicas' own (--cpus-per-replica) to compare like with like (default: 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    args.urls = [part.strip() for part in args.url.split(",") if part.strip()]
    for url in args.urls:
        host = urlsplit(url).hostname or ""
        if not _is_loopback(host):
            parser.error(f"--url must point at this machine's loopback (127.0.0.1, ::1, localhost), got {host!r}")
    args.protocols = [part.strip() for part in args.protocols.split(",") if part.strip()]
    unknown = sorted(set(args.protocols) - set(PROTOCOLS))
    if unknown or not args.protocols:
        parser.error(f"--protocols: choose from {', '.join(PROTOCOLS)}, got {args.protocols}")
    if not 1 <= args.frames_per_request <= 256:
        parser.error("--frames-per-request must be in [1, 256]")
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
    """The demo model's vocabulary (its template turns it into the evaluation prompts); the
    shape names for other models."""
    import json

    from clippy_rt.datasets.synthetic import class_names
    from clippy_rt.formats.model_dir import VOCABULARY_FILE, demo_model_dir

    if model == "demo":
        return json.loads((demo_model_dir() / VOCABULARY_FILE).read_text())
    return class_names()


def baseline(model: str, images, prompts, thread_counts: List[int], seconds: float = 4.0,
             batches=(1, 2, 4, 8, 16, 32), methods=("segment", "stream")) -> Dict[str, object]:
    """Best frames/s of the local engine over ``batches``, the given torch thread counts and
    ``methods``: its batched ``segment``, and its ``stream`` with a chunk of the batch size
    (on the CPU, the TorchScript trace of the image path)."""
    import numpy as np
    import torch

    import clippy_rt

    engine = clippy_rt.load(model)
    rates = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for method in methods:
            for batch in batches:
                frames = [images[i % len(images)] for i in range(batch)]
                if method == "stream":
                    arrays = [np.asarray(frame, dtype=np.uint8) for frame in frames]
                    stream = engine.stream(prompts, batch=batch)

                    def run() -> None:
                        stream(arrays)
                else:
                    def run() -> None:
                        engine.segment(frames, prompts)
                run()
                run()  # a stream records its trace on its second call
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    run()
                    done += batch
                rates[(threads, method, batch)] = done / (time.perf_counter() - start)
    threads, method, batch = max(rates, key=rates.get)
    return {"frames_per_s": {f"threads {t}, {m}, batch {b}": round(v, 2) for (t, m, b), v in rates.items()},
            "best_threads": threads, "best_method": method, "best_batch": batch,
            "best_frames_per_s": round(rates[(threads, method, batch)], 2)}


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


def run_load(urls: List[str], protocol: str, payloads: List[object], references, prompts, clients: int,
             total: int, duration: float, timeout: float, frames_per_request: int = 1) -> Dict[str, object]:
    """Send ``total`` frames (or stop after ``duration`` s) from ``clients`` threads over
    ``protocol``, ``frames_per_request`` frames per request (the last request may carry
    fewer); ``payloads[i]`` is what is sent for image i, ``references[i]`` its labels."""
    from clippy_rt.serve.client import Client
    from clippy_rt.errors import InputError, ServerError

    lock = threading.Lock()
    counter = {"next": 0}
    latencies: List[float] = []
    outcome = {"ok": 0, "errors": 0, "lost": 0, "mismatched": 0}
    messages: Dict[str, int] = {}
    stop_at = time.monotonic() + duration
    client = Client(urls, timeout=timeout, retries=0, protocol="json" if protocol == "json" else "binary")

    def worker() -> None:
        session = (client.stream(prompts, in_flight=frames_per_request, max_pending=frames_per_request)
                   if protocol == "session" else None)
        try:
            work(session)
        finally:
            if session is not None:
                session.close()

    def work(session) -> None:
        while True:
            with lock:
                first = counter["next"]
                if first >= total or time.monotonic() >= stop_at:
                    return
                count = min(frames_per_request, total - first)
                counter["next"] += count
            images = [(first + offset) % len(payloads) for offset in range(count)]
            start = time.perf_counter()
            kinds: List[str] = []
            if session is not None:
                # ``count`` frames in flight at once; each frame's latency from its submission.
                for i in images:
                    session.submit(payloads[i], frame_id=i, timestamp=time.perf_counter())
                answers = session.answers(wait=True)
                done = time.perf_counter()
                with lock:
                    for answer in answers:
                        if answer.error is not None:
                            outcome["errors"] += 1
                            messages[str(answer.error)[:160]] = messages.get(str(answer.error)[:160], 0) + 1
                            continue
                        labels, want = answer.segmentation.labels, references[answer.frame_id]
                        outcome["ok" if labels.dtype == want.dtype and torch_equal(labels, want) else "mismatched"] += 1
                        latencies.append((done - answer.timestamp) * 1000.0)
                    outcome["lost"] += count - len(answers)
                continue
            try:
                if frames_per_request == 1:
                    results = [client.segment(payloads[images[0]], prompts)]
                else:
                    results = client.segment([payloads[i] for i in images], prompts)
                kinds = ["ok" if result.labels.dtype == references[i].dtype and torch_equal(result.labels, references[i])
                         else "mismatched" for i, result in zip(images, results)]
                kinds += ["lost"] * (count - len(results))
                message = None
            except InputError as exc:  # a 4xx answer
                kinds, message = ["errors"] * count, str(exc)
            except ServerError as exc:
                kinds = ["errors" if "server error" in str(exc) else "lost"] * count
                message = str(exc)
            elapsed = (time.perf_counter() - start) * 1000.0
            with lock:
                for kind in kinds:
                    outcome[kind] += 1
                if message is None:
                    latencies.append(elapsed)
                else:
                    messages[message[:160]] = messages.get(message[:160], 0) + 1

    def progress() -> None:
        while any(thread.is_alive() for thread in threads):
            time.sleep(5.0)
            with lock:
                print(f"  {protocol}: {counter['next']}/{total} frames sent, {outcome['ok']} ok",
                      file=sys.stderr, flush=True)

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
    return {"protocol": protocol, "frames_per_request": frames_per_request, "sent": counter["next"], **outcome,
            "requests": len(latencies), "wall_s": round(wall, 2),
            "throughput_per_s": round(answered / wall, 2),
            "latency_ms": {"p50": round(stats.median, 1), "p95": round(stats.p95, 1), "p99": round(stats.p99, 1),
                           "max": round(stats.max, 1)} if stats else None,
            "error_messages": messages}


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


MARKDOWN_HEADER = ("| date (UTC) | server args | protocol | clients | frames | frames/s | local /s around it | ratio "
                   "| ratio to the run's best local | p50 ms | p95 ms | p99 ms | p99/p50 | errors | lost | mismatched "
                   "| replica CPU ms/frame | load avg (1 min) before, after |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_rows(report: Dict[str, object], server_args: str) -> List[str]:
    """RESULTS.md's serving table rows, one per protocol (header: MARKDOWN_HEADER)."""
    before, after = report["environment_before"], report.get("environment_after") or {}
    loads = ", ".join(str((env.get("load_average") or ["?"])[0]) for env in (before, after))
    rows = []
    for load in report["loads"]:
        latency = load["latency_ms"] or {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
        unit = "in flight" if load["protocol"] == "session" else "/request"
        protocol = load["protocol"] + (f" ({load['frames_per_request']}{' ' if unit == 'in flight' else ''}{unit})"
                                       if load["frames_per_request"] > 1 else "")
        cells = [before["date"][:16].replace("T", " "), f"`{server_args}`" if server_args else "(defaults)", protocol,
                 report["clients"], load["sent"], load["throughput_per_s"], load.get("local_around_frames_per_s", "-"),
                 load.get("vs_local", "-"), load.get("vs_run_best", "-"),
                 latency["p50"], latency["p95"], latency["p99"],
                 round(latency["p99"] / latency["p50"], 2) if latency["p50"] else "-", load["errors"], load["lost"],
                 load["mismatched"], load.get("replica_cpu_ms_per_frame", "-"), loads]
        rows.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return rows


def replica_cpu_ms(cpu: Dict[str, float], frames: int):
    """CPU milliseconds per frame of the Serve replica processes, from ``cpu_used_during``."""
    used = sum(seconds for name, seconds in cpu.items() if "ServeReplica" in name)
    return round(1000.0 * used / frames, 2) if frames and used else "-"


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np

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
                                 "clients": args.clients, "requests": args.requests, "images": len(paths),
                                 "protocols": args.protocols}
    thread_counts = [int(part) for part in args.baseline_threads.split(",") if part.strip()]
    if args.baseline:
        print("measuring the local engine's batched segment and stream throughput", file=sys.stderr, flush=True)
        report["local_baseline"] = baseline(model, pictures, prompts, thread_counts)
    import clippy_rt

    reference_engine = clippy_rt.load(model)
    references = [reference_engine.segment(p, prompts).labels for p in pictures]
    del reference_engine
    files = [encode_image_file(p) for p in paths]
    arrays = [np.asarray(picture, dtype=np.uint8) for picture in pictures]
    if args.baseline:
        local = report["local_baseline"]
        report["replica_in_process"] = replica_baseline(model, files, prompts, local["best_threads"],
                                                        local["best_batch"])

    def measure_again() -> float:
        """The local engine at the baseline's best setting, now (3 s)."""
        local = report["local_baseline"]
        print("measuring the local engine at its best setting", file=sys.stderr, flush=True)
        return baseline(model, pictures, prompts, [local["best_threads"]], seconds=3.0,
                        batches=(local["best_batch"],), methods=(local["best_method"],))["best_frames_per_s"]

    server = start_server(args.start_server, args.urls[0], args.server_args) if args.start_server else None
    report["loads"] = []
    try:
        probes = [Client(url, timeout=10, retries=0) for url in args.urls]
        report["health"] = [wait_healthy(probe, server) for probe in probes][0]
        for protocol in args.protocols:
            payloads = arrays if protocol in ("binary-raw", "binary-multi", "session") else files
            per_request = args.frames_per_request if protocol in ("binary-multi", "session") else 1
            if args.warmup:
                run_load(args.urls, protocol, payloads, references, prompts, args.clients, args.warmup, 120.0,
                         args.timeout, per_request)
            stats_before = [probe.stats() for probe in probes]
            local_before = measure_again() if args.baseline else None
            print(f"load: {protocol}, {args.clients} clients, {args.requests} frames, at most {args.duration:g} s",
                  file=sys.stderr, flush=True)
            cpu_before = namespace_cpu_seconds()
            load = run_load(args.urls, protocol, payloads, references, prompts, args.clients, args.requests,
                            args.duration, args.timeout, per_request)
            load["cpu_seconds"] = cpu_used_during(cpu_before, namespace_cpu_seconds())
            load["replica_cpu_ms_per_frame"] = replica_cpu_ms(load["cpu_seconds"], load["ok"] + load["mismatched"])
            load["replica_stats_before"] = stats_before
            load["replica_stats_after"] = [probe.stats() for probe in probes]
            if local_before is not None:
                load["local_before_frames_per_s"] = local_before
                if report["loads"]:
                    report["loads"][-1]["local_after_frames_per_s"] = local_before
            report["loads"].append(load)
        if args.baseline and report["loads"]:
            report["loads"][-1]["local_after_frames_per_s"] = measure_again()
        report["environment_after"] = collect_environment()
    finally:
        if server is not None:
            stopping = time.monotonic()
            server.send_signal(signal.SIGTERM)
            try:
                report["server_exit_code"] = server.wait(timeout=120)
                report["server_shutdown_s"] = round(time.monotonic() - stopping, 1)
            except subprocess.TimeoutExpired:
                server.kill()
                report["server_exit_code"] = "killed"
    if args.baseline:
        local = report["local_baseline"]
        print("measuring the local engine again at its best setting", file=sys.stderr, flush=True)
        again = baseline(model, pictures, prompts, [local["best_threads"]], batches=(local["best_batch"],),
                         methods=(local["best_method"],))
        report["local_baseline_after"] = again["best_frames_per_s"]
        best = max([local["best_frames_per_s"], again["best_frames_per_s"]]
                   + [load[key] for load in report["loads"]
                      for key in ("local_before_frames_per_s", "local_after_frames_per_s") if key in load])
        report["local_best_frames_per_s"] = best
        for load in report["loads"]:
            around = max(load.get("local_before_frames_per_s", 0), load.get("local_after_frames_per_s", 0))
            load["local_around_frames_per_s"] = around or best
            load["vs_local"] = round(load["throughput_per_s"] / load["local_around_frames_per_s"], 3)
            load["vs_run_best"] = round(load["throughput_per_s"] / best, 3)
    if args.json:
        from clippy_rt.formats.atomic import atomic_write

        text = json.dumps(report, indent=1).encode()
        atomic_write(args.json, lambda handle: handle.write(text))
    summary = {key: report.get(key) for key in ("local_baseline", "local_baseline_after", "replica_in_process",
                                                "server_shutdown_s")}
    summary["loads"] = [{key: load[key] for key in ("protocol", "sent", "ok", "errors", "lost", "mismatched",
                                                    "throughput_per_s", "local_around_frames_per_s", "vs_local",
                                                    "vs_run_best", "latency_ms",
                                                    "replica_cpu_ms_per_frame", "cpu_seconds") if key in load}
                        for load in report["loads"]]
    print(json.dumps(summary, indent=1))
    print(MARKDOWN_HEADER)
    print("\n".join(markdown_rows(report, args.server_args)))
    clean = all(load["errors"] == 0 and load["lost"] == 0 and load["mismatched"] == 0 for load in report["loads"])
    return 0 if clean and len(report["loads"]) == len(args.protocols) else 1


if __name__ == "__main__":
    sys.exit(main())
