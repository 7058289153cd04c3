"""A serving scenario run inside a loopback-only network namespace (``unshare -n``).

    unshare -n python tests/serve/netns_scenario.py single MODEL INPUTS OUT
    unshare -n python tests/serve/netns_scenario.py cluster MODEL INPUTS OUT

Brings up ``lo``, starts ``clippy-rt serve`` (``single``: with its own local Ray;
``cluster``: a head and a worker node started with ``ray start`` first, the server joining
them with --address), sends the requests of INPUTS/requests.json from concurrent clients
over JSON and over binary frames, the bad requests of each protocol and a client that
leaves mid-request, notes which process listens on the port, stops the server with
SIGTERM, and writes what it saw to OUT (``report.json``, ``labels.npz``) for the test to
check against a local engine.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

PORT = 8123
URL = f"http://127.0.0.1:{PORT}"
RAY_PORT = 6390
START_TIMEOUT_S = 240


def main() -> int:
    mode, model, inputs, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    spec = json.loads((inputs / "requests.json").read_text())
    # A short temp dir: Ray's Unix socket paths must stay under ~107 characters.
    ray_tmp = tempfile.mkdtemp(prefix="crt-", dir="/tmp")
    # Token authentication, as nodes joining a cluster need; this process joins too.
    os.environ.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                      RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env = dict(os.environ)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    report = {"mode": mode}
    command = [sys.executable, "-m", "clippy_rt.cli.main", "serve", model, "--port", str(PORT),
               "--max-batch", str(spec["max_batch"]), "--batch-wait-ms", str(spec["batch_wait_ms"]),
               "--max-body-bytes", str(spec["max_body_bytes"]), "--gil-switch-ms", "2.5"]
    if mode == "cluster":
        for args in (["--head", f"--port={RAY_PORT}", "--num-cpus=1", "--include-dashboard=false"],
                     [f"--address=127.0.0.1:{RAY_PORT}", "--num-cpus=1"]):
            subprocess.run([ray_cli, "start", *args, f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        command += ["--address", f"127.0.0.1:{RAY_PORT}", "--replicas", "2"]
    log_path = out / "server.log"
    server = subprocess.Popen(command, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        # Each replica answers on its own port: two in the cluster run.
        urls = [URL] if mode == "single" else [URL, f"http://127.0.0.1:{PORT + 1}"]
        report["health"] = [wait_for_health(server, url) for url in urls][0]
        report["startup_s"] = round(time.monotonic() - started, 1)
        from clippy_rt.serve.client import Client

        client = Client(urls, timeout=120, retries=2)
        if mode == "single":
            single_scenario(client, spec, inputs, out, report)
        else:
            cluster_scenario(client, spec, inputs, out, report)
    finally:
        stopping = time.monotonic()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            report["exit_code"] = server.wait(timeout=120)
            report["shutdown_s"] = round(time.monotonic() - stopping, 1)
        except subprocess.TimeoutExpired:
            server.kill()
            report["exit_code"] = "killed after 120 s"
        report["port_closed"] = port_closed()
        if mode == "cluster":
            subprocess.run([ray_cli, "stop", "--force"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        report["leftover_ray_processes"] = processes_mentioning(ray_tmp)
        report["server_log_tail"] = log_path.read_text(errors="replace")[-3000:]
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


def wait_for_health(server: subprocess.Popen, url: str) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} within {START_TIMEOUT_S} s")


def concurrent_segments(client, spec, inputs):
    """Send every request of ``spec`` at once (one thread each); return (results, errors)."""
    requests = spec["requests"]
    results = [None] * len(requests)
    errors = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(index):
        item = requests[index]
        barrier.wait()
        try:
            results[index] = client.segment(inputs / item["image"], item["prompts"], size=item.get("size"),
                                            scores=True)
        except Exception as exc:  # reported, and the test fails on it
            errors[index] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def single_scenario(client, spec, inputs, out, report):
    # Warm the text cache and the first-call paths, so the concurrent burst is what batches.
    client.segment(inputs / spec["requests"][0]["image"], spec["requests"][0]["prompts"])
    before = client.stats()
    results, errors = concurrent_segments(client, spec, inputs)
    report["errors"] = errors
    report["stats_before"] = before
    report["stats_after"] = client.stats()
    # The server (and so its Ray cluster) inherits this process's niceness.
    report["niceness"] = os.getpriority(os.PRIO_PROCESS, 0)
    report["listener"] = listener(PORT)
    arrays = {}
    for index, result in enumerate(results):
        if result is not None:
            arrays[f"labels_{index}"] = result.labels.numpy()
            arrays[f"scores_{index}"] = result.scores.numpy()
            arrays[f"classes_{index}"] = np.array(result.prompts)
    classify = spec["classify"]
    report["classify"] = client.classify(inputs / classify["image"], classify["labels"], top_k=classify["top_k"])
    report["binary_errors"] = binary_segments(spec, inputs, arrays)
    report["session"] = session_segments(spec, inputs, arrays)
    report["bad"] = bad_requests(spec, inputs)
    report["bad_binary"] = bad_binary_requests(spec, inputs)
    report["left_mid_request"] = leave_mid_request()
    # The replica keeps serving after the bad requests.
    first = spec["requests"][0]
    again = client.segment(inputs / first["image"], first["prompts"], size=first.get("size"))
    report["after_bad_equal"] = bool(np.array_equal(again.labels.numpy(), arrays.get("labels_0")))
    report["readme_curl"] = readme_curl()
    np.savez(out / "labels.npz", **arrays)


def binary_segments(spec, inputs, arrays):
    """The requests again over binary frames, several frames per request (one per prompt set
    and size), from concurrent threads; labels into ``arrays`` as binary_labels_<index>."""
    from clippy_rt.serve.client import Client

    groups = {}
    for index, item in enumerate(spec["requests"]):
        key = json.dumps([item["prompts"], item.get("size")])
        groups.setdefault(key, []).append(index)
    client = Client(URL, timeout=120, retries=0)
    errors = []

    def send(indices):
        item = spec["requests"][indices[0]]
        try:
            results = client.segment([inputs / spec["requests"][i]["image"] for i in indices], item["prompts"],
                                     size=item.get("size"))
            for index, result in zip(indices, results):
                arrays[f"binary_labels_{index}"] = result.labels.numpy()
        except Exception as exc:  # reported, and the test fails on it
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=send, args=(indices,)) for indices in groups.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def session_segments(spec, inputs, arrays):
    """The requests of the first prompt set without a size through one camera session
    (PNG files and raw frames alternating); labels into ``arrays`` as session_labels_<index>.
    Returns the frame ids answered, the errors, and what opening a bad session raised."""
    from PIL import Image

    from clippy_rt.serve.client import Client

    client = Client(URL, timeout=120, retries=0)
    first = spec["requests"][0]["prompts"]
    chosen = [i for i, item in enumerate(spec["requests"]) if item["prompts"] == first and "size" not in item]
    answered, errors = [], []
    with client.stream(first, in_flight=3, max_pending=len(chosen)) as session:
        for index in chosen:
            path = inputs / spec["requests"][index]["image"]
            session.submit(path if index % 2 else np.asarray(Image.open(path).convert("RGB")), frame_id=index)
        for answer in session.answers(wait=True):
            answered.append(answer.frame_id)
            if answer.error is not None:
                errors.append(str(answer.error))
            else:
                arrays[f"session_labels_{answer.frame_id}"] = answer.segmentation.labels.numpy()
    try:
        client.stream({"a": ["x"], "b": ["x"]})
        bad = "opened"
    except Exception as exc:  # the server's refusal, checked by the test
        bad = f"{type(exc).__name__}: {exc}"
    return {"chosen": chosen, "answered": answered, "errors": errors, "bad_session": bad}


def bad_binary_requests(spec, inputs):
    from clippy_rt.serve.frames import HEADER_LENGTH, REQUEST_TYPE, encode_frames, frame_of

    length, body = encode_frames([frame_of(inputs / spec["requests"][0]["image"])], ["a", "b"])
    cases = {
        "truncated": ("/v1/segment", {HEADER_LENGTH: str(length)}, body[:-10]),
        "no_header_length": ("/v1/segment", {}, body),
        "header_not_json": ("/v1/segment", {HEADER_LENGTH: "3"}, b"{x}" + body),
        "classify": ("/v1/classify", {HEADER_LENGTH: str(length)}, body),
    }
    return {name: answer_of("POST", path, data, {"Content-Type": REQUEST_TYPE, **headers})
            for name, (path, headers, data) in cases.items()}


def leave_mid_request():
    """Send half of a binary request's body, then close the connection; "closed" once done."""
    import socket

    with socket.create_connection(("127.0.0.1", PORT), timeout=10) as connection:
        connection.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/x-clippy-frames\r\nClippy-Header-Length: 40\r\n"
                           b"Content-Length: 100000\r\n\r\n" + b"{" * 5000)
        time.sleep(0.5)
    return "closed"


def listener(port):
    """The address and the process command line of the socket listening on ``port``."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, local_port = fields[1].rsplit(":", 1)
            if int(local_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes[fields[9]] = address
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        for inode, address in inodes.items():
            if f"socket:[{inode}]" in links:
                found.append({"address": address, "process": cmdline[:120]})
    return found


def readme_curl():
    """Run the curl examples of docs/serving.md (port changed to this server's) from the repository root;
    the parsed JSON answers, or a reason why they could not run."""
    import re
    import shutil

    if shutil.which("curl") is None or shutil.which("base64") is None:
        return "curl or base64 is missing"
    root = Path(__file__).resolve().parents[2]
    section = (root / "docs" / "serving.md").read_text()
    answers = []
    for line in re.findall(r"^\$ (curl .*)$", section, flags=re.M):
        command = line.replace("127.0.0.1:8000", f"127.0.0.1:{PORT}")
        done = subprocess.run(["bash", "-c", command], cwd=root, capture_output=True, text=True, timeout=120)
        try:
            answers.append(json.loads(done.stdout))
        except ValueError:
            answers.append({"raw": done.stdout[:300], "stderr": done.stderr[:300]})
    return answers


def bad_requests(spec, inputs):
    image = base64.b64encode((inputs / spec["requests"][0]["image"]).read_bytes()).decode()
    oversized = json.dumps({"image": "A" * (spec["max_body_bytes"] + 10), "prompts": ["x"]}).encode()
    cases = {
        "not_base64": ("POST", "/v1/segment", json.dumps({"image": "%%%not base64%%%", "prompts": ["a"]}).encode()),
        "not_an_image": ("POST", "/v1/segment",
                         json.dumps({"image": base64.b64encode(b"hello, world").decode(), "prompts": ["a"]}).encode()),
        "empty_prompts": ("POST", "/v1/segment", json.dumps({"image": image, "prompts": []}).encode()),
        "bad_size": ("POST", "/v1/segment", json.dumps({"image": image, "prompts": ["a"], "size": 30}).encode()),
        "not_json": ("POST", "/v1/segment", b"{this is not json"),
        "oversized": ("POST", "/v1/segment", oversized),
        "bad_top_k": ("POST", "/v1/classify", json.dumps({"image": image, "labels": ["a"], "top_k": 0}).encode()),
        "unknown_route": ("GET", "/v1/nothing", None),
    }
    return {name: answer_of(method, path, body, {"Content-Type": "application/json"})
            for name, (method, path, body) in cases.items()}


def answer_of(method, path, data, headers):
    """{"status", "body": the parsed JSON answer (or {"raw": its text})} of one request."""
    request = urllib.request.Request(URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = {"raw": answer.decode("utf-8", "replace")[:300]}
    return {"status": status, "body": parsed}


def cluster_scenario(client, spec, inputs, out, report):
    import ray

    results, errors = concurrent_segments(client, spec, inputs)
    report["errors"] = errors
    arrays = {f"labels_{i}": r.labels.numpy() for i, r in enumerate(results) if r is not None}
    np.savez(out / "labels.npz", **arrays)
    # Which nodes host a replica: ask /v1/stats from concurrent clients (spread over the
    # two replicas' ports) until both replicas answered, or give up.
    seen = {}
    for _ in range(10):
        answers = [None] * 8
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, client.stats())) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen.update({answer["replica"]: answer["node_id"] for answer in answers if answer})
        if len(seen) >= 2:
            break
    report["replica_nodes"] = sorted(seen.values())
    ray.init(address=f"127.0.0.1:{RAY_PORT}", log_to_driver=False, logging_level="ERROR")
    try:
        report["nodes"] = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    finally:
        ray.shutdown()


def port_closed() -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", PORT)) != 0


def processes_mentioning(text: str) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline[:200])
    return found


if __name__ == "__main__":
    sys.exit(main())
