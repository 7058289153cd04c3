"""``clippy-rt serve`` on a real Ray Serve, inside a loopback-only network namespace.

One server run (module fixture) answers every test here: concurrent requests (JSON and
binary frames) against the local engine's results, the batches the replica formed, bad
requests of each protocol, a client leaving mid-request, who listens on the port, health,
shutdown.
The two-node run (head + worker on this machine) is marked ``slow``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ray.serve", reason="needs the serve extra: pip install 'clippy-rt[serve]'")

SCRIPT = Path(__file__).with_name("netns_scenario.py")
MAX_BATCH = 8
MAX_BODY_BYTES = 200_000
SCENARIO_TIMEOUT_S = 480


def _namespace_problem() -> str:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs the unshare and ip commands to make a loopback-only network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a loopback-only network namespace here: {probe.stderr.strip() or probe.returncode}"
    return ""


NAMESPACE_PROBLEM = _namespace_problem()
pytestmark = pytest.mark.skipif(bool(NAMESPACE_PROBLEM), reason=NAMESPACE_PROBLEM or "-")


def make_inputs(directory: Path, count: int) -> dict:
    """``count`` random images of two sizes, three batch keys (two prompt sets, two input sizes)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    prompt_sets = [["a cat", "a dog", "a tree", "the sky"], {"ground": ["grass", "sand"], "thing": ["a box"]}]
    requests = []
    for index in range(count):
        shape = (48, 64, 3) if index % 4 else (40, 56, 3)
        name = f"image-{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(directory / name)
        request = {"image": name, "prompts": prompt_sets[index % 3 == 2]}
        if index % 8 == 5:
            request["size"] = 48
        requests.append(request)
    spec = {"requests": requests, "max_batch": MAX_BATCH, "batch_wait_ms": 100, "max_body_bytes": MAX_BODY_BYTES,
            "classify": {"image": requests[1]["image"], "labels": ["a cat", "a dog", "a car"], "top_k": 2}}
    (directory / "requests.json").write_text(json.dumps(spec))
    return spec


def run_scenario(mode: str, model: Path, inputs: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["unshare", "-n", sys.executable, str(SCRIPT), mode, str(model), str(inputs), str(out)],
                          capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S)
    report_path = out / "report.json"
    assert report_path.is_file(), f"scenario failed (exit {done.returncode}): {done.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    assert done.returncode == 0, f"scenario failed: {done.stderr[-3000:]}\n{report.get('server_log_tail')}"
    return report


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("serve")
    spec = make_inputs(root / "inputs", 32)
    report = run_scenario("single", tiny_model_dir, root / "inputs", root / "out")
    return spec, report, np.load(root / "out" / "labels.npz"), root / "inputs"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    import clippy_rt

    return clippy_rt.load(tiny_model_dir)


def test_concurrent_requests_match_local_engine(scenario, engine):
    spec, report, arrays, inputs = scenario
    assert report["errors"] == [None] * 32
    for index, request in enumerate(spec["requests"]):
        expected = engine.segment(str(inputs / request["image"]), request["prompts"], size=request.get("size"))
        assert tuple(arrays[f"classes_{index}"]) == expected.prompts
        labels = torch.from_numpy(arrays[f"labels_{index}"])
        assert labels.shape == expected.labels.shape, index
        assert torch.equal(labels, expected.labels), f"request {index}: labels differ from the local engine"
        torch.testing.assert_close(torch.from_numpy(arrays[f"scores_{index}"]), expected.scores,
                                   rtol=1e-5, atol=1e-5)


def test_binary_frames_match_local_engine(scenario, engine):
    spec, report, arrays, inputs = scenario
    assert report["binary_errors"] == []
    for index, request in enumerate(spec["requests"]):
        expected = engine.segment(str(inputs / request["image"]), request["prompts"], size=request.get("size"))
        labels = torch.from_numpy(arrays[f"binary_labels_{index}"])
        assert labels.dtype == expected.labels.dtype == torch.uint8
        assert torch.equal(labels, expected.labels), f"request {index}: binary labels differ from the local engine"


def test_camera_session_matches_local_engine(scenario, engine):
    spec, report, arrays, inputs = scenario
    session = report["session"]
    assert len(session["chosen"]) >= 8 and session["answered"] == session["chosen"]
    assert session["errors"] == []
    for index in session["chosen"]:
        request = spec["requests"][index]
        expected = engine.segment(str(inputs / request["image"]), request["prompts"])
        labels = torch.from_numpy(arrays[f"session_labels_{index}"])
        assert labels.dtype == torch.uint8 and torch.equal(labels, expected.labels), index
    assert session["bad_session"].startswith("RequestError") and "could never win" in session["bad_session"]


def test_requests_reach_the_replica_directly_on_loopback(scenario):
    _, report, _, _ = scenario
    [socket] = report["listener"]
    assert socket["address"] == "0100007F"  # 127.0.0.1, as /proc/net/tcp writes it
    # The replica's own HTTP server, not Serve's Python proxy.
    assert "ServeReplica" in socket["process"] and "Proxy" not in socket["process"]


def test_bad_binary_requests_answer_4xx_and_the_replica_keeps_serving(scenario):
    _, report, _, _ = scenario
    bad = report["bad_binary"]
    assert {name: answer["status"] for name, answer in bad.items()} == {
        "truncated": 400, "no_header_length": 400, "header_not_json": 400, "classify": 415}
    assert "truncated or padded" in bad["truncated"]["body"]["error"]
    assert "Clippy-Header-Length" in bad["no_header_length"]["body"]["error"]
    assert report["left_mid_request"] == "closed"
    assert report["after_bad_equal"] is True


def test_replica_runs_at_the_servers_priority_and_its_gil_switch_interval(scenario):
    _, report, _, _ = scenario
    # Not Ray's default for workers (15 lower than the command that started the cluster).
    assert report["stats_after"]["niceness"] == report["niceness"]
    assert report["stats_after"]["gil_switch_interval_ms"] == 2.5  # --gil-switch-ms


def test_concurrent_requests_were_batched(scenario):
    _, report, _, _ = scenario
    before = {int(k): v for k, v in report["stats_before"]["batch_sizes"].items()}
    after = {int(k): v for k, v in report["stats_after"]["batch_sizes"].items()}
    burst = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    burst = {size: count for size, count in burst.items() if count}
    assert sum(size * count for size, count in burst.items()) == 32
    assert max(burst) <= MAX_BATCH
    # 32 requests released together with a 100 ms batch window must not go one by one.
    assert sum(burst.values()) <= 32 // 2, burst
    calls_before = {int(k): v for k, v in report["stats_before"]["engine_calls"].items()}
    calls = {int(k): v - calls_before.get(int(k), 0) for k, v in report["stats_after"]["engine_calls"].items()}
    assert sum(size * count for size, count in calls.items()) == 32
    # Three batch keys: a batch of n requests needs at most 3 engine calls.
    assert sum(calls.values()) <= 3 * sum(burst.values())
    assert max(size for size, count in calls.items() if count) > 1


def test_classify_matches_local_engine(scenario, engine):
    spec, report, _, inputs = scenario
    request = spec["classify"]
    expected = engine.classify(str(inputs / request["image"]), request["labels"], top_k=request["top_k"])
    got = report["classify"]
    assert [name for name, _ in got] == [name for name, _ in expected]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], rtol=1e-5, atol=1e-6)


def test_bad_requests_answer_4xx_json(scenario):
    _, report, _, _ = scenario
    expected = {"not_base64": 400, "not_an_image": 400, "empty_prompts": 400, "bad_size": 400, "not_json": 400,
                "oversized": 413, "bad_top_k": 400, "unknown_route": 404}
    bad = report["bad"]
    assert {name: answer["status"] for name, answer in bad.items()} == expected
    for name, answer in bad.items():
        message = answer["body"].get("error")
        assert isinstance(message, str) and message and "\n" not in message, (name, answer)
    assert "base64" in bad["not_base64"]["body"]["error"]
    assert "PNG or JPEG" in bad["not_an_image"]["body"]["error"]
    assert "empty" in bad["empty_prompts"]["body"]["error"]
    assert str(MAX_BODY_BYTES) in bad["oversized"]["body"]["error"]
    assert report["after_bad_equal"] is True


def test_health(scenario, tiny_model_dir):
    _, report, _, _ = scenario
    assert report["health"] == {"status": "ok", "model": str(tiny_model_dir.resolve()), "backend": "torch",
                                "device": "cpu", "precision": "fp32", "random_weights": True}


def test_readme_curl_examples_answer(scenario):
    _, report, _, _ = scenario
    answers = report["readme_curl"]
    if isinstance(answers, str):
        pytest.skip(answers)
    health, segment, classify = answers
    assert health["status"] == "ok"
    assert segment["classes"] == ["background", "circle", "square"]
    assert (segment["height"], segment["width"]) == (64, 64)
    assert sum(segment["fractions"].values()) == pytest.approx(1.0)
    assert len(classify["labels"]) == 2


def test_sigterm_shuts_down_cleanly(scenario):
    _, report, _, _ = scenario
    assert report["exit_code"] == 0, report["server_log_tail"]
    # Seconds, not Serve's default 30 s drain of a directly reachable replica.
    assert report["shutdown_s"] < 20, report["shutdown_s"]
    assert report["port_closed"] is True
    assert report["leftover_ray_processes"] == []
    assert "stopped" in report["server_log_tail"]


@pytest.mark.slow
def test_two_nodes_on_one_machine(tmp_path, tiny_model_dir, engine):
    """A head and a worker node (one CPU each) in one namespace: the two replicas land on
    different nodes and answer like the local engine."""
    spec = make_inputs(tmp_path / "inputs", 8)
    report = run_scenario("cluster", tiny_model_dir, tmp_path / "inputs", tmp_path / "out")
    assert report["errors"] == [None] * 8
    assert len(report["nodes"]) == 2
    assert sorted(set(report["replica_nodes"])) == report["nodes"]
    arrays = np.load(tmp_path / "out" / "labels.npz")
    for index, request in enumerate(spec["requests"]):
        expected = engine.segment(str(tmp_path / "inputs" / request["image"]), request["prompts"],
                                  size=request.get("size"))
        assert torch.equal(torch.from_numpy(arrays[f"labels_{index}"]), expected.labels), index
    assert report["exit_code"] == 0
    assert report["leftover_ray_processes"] == []
