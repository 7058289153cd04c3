"""`clippy-rt serve` before Ray starts: flags, option checks, a missing Ray, a bad model."""

from __future__ import annotations

import sys

import pytest
import torch

from clippy_rt.cli.main import main as cli
from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.serve import ServeOptions, require_ray


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--backend", "--device", "--precision", "--host", "--port", "--replicas", "--max-batch",
                 "--batch-wait-ms", "--address", "--max-body-bytes", "--cpus-per-replica"):
        assert flag in out


def test_missing_ray_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'clippy-rt\[serve\]'"):
        require_ray()
    assert cli(["serve", "demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("clippy-rt serve: error: serving needs Ray Serve") and "\n" not in err


def test_bad_model_fails_before_ray_starts(tmp_path, monkeypatch, capsys):
    import clippy_rt.serve as serve_package

    started = []
    monkeypatch.setattr(serve_package, "serve_until_stopped", lambda *a, **k: started.append(a) or 0)
    assert cli(["serve", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
    assert started == []


def test_model_path_is_made_absolute_for_the_replicas(tiny_model_dir, monkeypatch):
    import clippy_rt.serve as serve_package

    seen = []
    monkeypatch.setattr(serve_package, "serve_until_stopped", lambda options: seen.append(options) or 0)
    monkeypatch.chdir(tiny_model_dir.parent)
    assert cli(["serve", tiny_model_dir.name, "--replicas", "3", "--max-batch", "4", "--port", "9000"]) == 0
    [options] = seen
    assert options.model == str(tiny_model_dir.resolve())
    assert (options.replicas, options.max_batch, options.port, options.host) == (3, 4, 9000, "127.0.0.1")


@pytest.mark.parametrize("field, value", [("port", 0), ("port", 70000), ("replicas", 0), ("max_batch", 0),
                                          ("batch_wait_ms", -1.0), ("batch_wait_ms", float("nan")),
                                          ("cpus_per_replica", -1), ("max_body_bytes", 0), ("replicas", True),
                                          ("gil_switch_ms", 0), ("gil_switch_ms", float("inf")),
                                          ("gil_switch_ms", 2000), ("gil_switch_ms", True)])
def test_options_reject(field, value):
    with pytest.raises(InputError, match=field):
        ServeOptions(model="demo", **{field: value})


def test_options_cuda_and_threads():
    assert ServeOptions(model="demo").uses_cuda is False
    assert ServeOptions(model="demo", device="cuda:1").uses_cuda is True
    assert ServeOptions(model="x", backend="tensorrt").uses_cuda is True
    assert ServeOptions(model="demo", cpus_per_replica=2.5).threads == 2
    assert ServeOptions(model="demo", cpus_per_replica=0).threads == 1
    assert ServeOptions(model="demo").replica_resources == {"num_cpus": 1.0}
    assert ServeOptions(model="demo", device="cuda", cpus_per_replica=4).replica_resources == {"num_cpus": 4,
                                                                                              "num_gpus": 1}
    assert ServeOptions(model="demo", device="cuda", replicas_per_gpu=4).replica_resources == {"num_cpus": 1.0,
                                                                                              "num_gpus": 0.25}
    assert ServeOptions(model="demo", replicas_per_gpu=4).replica_resources == {"num_cpus": 1.0}


def test_serve_environment_gives_replicas_their_ports_and_passes_ray_serve_variables():
    from clippy_rt.serve.server import serve_environment

    options = ServeOptions(model="demo", port=9100, replicas=3, drain_s=0.5)
    env = serve_environment(options, {"HOME": "/root", "RAY_ADDRESS": "x"})
    assert env == {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "9100",
                   "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "9103",
                   "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.5", "RAY_SERVE_PORT_QUARANTINE_S": "0",
                   "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    env = serve_environment(options, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                      "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3", "PATH": "/bin"})
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "3"
    assert "PATH" not in env


def test_a_cluster_started_by_serve_runs_its_replicas_at_the_commands_priority():
    from clippy_rt.serve.server import ray_system_config

    assert ray_system_config({"HOME": "/root"}) == {"worker_niceness": 0}
    # Set for the command: Ray reads it itself.
    assert ray_system_config({"RAY_worker_niceness": "5"}) == {}


def test_drain_and_port_range_reach_the_options(monkeypatch):
    import clippy_rt.serve as serve_package

    seen = []
    monkeypatch.setattr(serve_package, "serve_until_stopped", lambda options: seen.append(options) or 0)
    assert cli(["serve", "demo", "--drain-s", "2.5", "--port", "9000", "--replicas", "2",
                "--replicas-per-gpu", "3", "--gil-switch-ms", "0.5"]) == 0
    assert (seen[0].drain_s, seen[0].port, seen[0].replicas, seen[0].replicas_per_gpu) == (2.5, 9000, 2, 3)
    assert seen[0].gil_switch_ms == 0.5
    assert cli(["serve", "demo"]) == 0
    assert seen[1].gil_switch_ms == 0.1
    with pytest.raises(InputError, match="65535"):
        ServeOptions(model="demo", port=65535, replicas=2)
    with pytest.raises(InputError, match="drain_s"):
        ServeOptions(model="demo", drain_s=-1)
    with pytest.raises(InputError, match="replicas_per_gpu"):
        ServeOptions(model="demo", replicas_per_gpu=0)


def test_text_cache_flags_reach_the_options(tiny_model_dir, monkeypatch, tmp_path):
    import clippy_rt.serve as serve_package

    seen = []
    monkeypatch.setattr(serve_package, "serve_until_stopped", lambda options: seen.append(options) or 0)
    model = str(tiny_model_dir)
    assert cli(["serve", model]) == 0
    assert cli(["serve", model, "--no-text-cache"]) == 0
    assert cli(["serve", model, "--text-cache-dir", str(tmp_path / "cache")]) == 0
    assert [options.text_cache_dir for options in seen] == [None, False, str(tmp_path / "cache")]


def test_replica_engine_keeps_text_embeddings_on_disk_unless_told_not_to(tiny_model_dir, tmp_path):
    from clippy_rt.serve.replica import load_engine

    cache = tmp_path / "cache"
    engine = load_engine(ServeOptions(model=str(tiny_model_dir), text_cache_dir=str(cache)))
    first = engine.encode_text(["a red circle"])
    assert [p for p in cache.iterdir() if p.is_file()], "no cache file written"
    # A restarted replica reads the embedding back instead of encoding it.
    restarted = load_engine(ServeOptions(model=str(tiny_model_dir), text_cache_dir=str(cache)))
    restarted._text_forward = None  # any encode would now fail
    torch.testing.assert_close(restarted.encode_text(["a red circle"]), first)

    memory_only = load_engine(ServeOptions(model=str(tiny_model_dir), text_cache_dir=False))
    assert memory_only.text_cache.store is None
