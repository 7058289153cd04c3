"""`clippy_rt.doctor`: the checks on this machine, faked Jetson files, engine sidecars, the CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import stat
import sys
import types
from pathlib import Path

import pytest
import torch

from clippy_rt import doctor
from clippy_rt.cli.main import main
from clippy_rt.doctor import (Finding, GpuFacts, Probe, check_engine_dir, check_jetson, check_tensorrt,
                              check_torch, diagnose, format_report)

ORIN_NANO = GpuFacts(name="Orin", capability=(8, 7), total_bytes=7_986_000_000, free_bytes=5_000_000_000)


def _bare_probe(tmp_path: Path) -> Probe:
    """A probe whose root and PATH hold nothing: no Jetson files, no tools."""
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "bin").mkdir(exist_ok=True)
    return Probe(root=tmp_path / "root", search_path=str(tmp_path / "bin"), disk_path=tmp_path)


def _tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _jetson_root(tmp_path: Path, release: str = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, "
                 "EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024", dpkg_jetpack: str = "6.0+b106",
                 mem_kb: int = 7_799_212, cpu_min_khz: int = 729_600, nvpmodel: bool = True) -> Probe:
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text(release + "\n")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    blocks = ["Package: nvidia-l4t-core\nStatus: install ok installed\nVersion: 36.3.0-20240506102626"]
    if dpkg_jetpack:
        blocks.append(f"Package: nvidia-jetpack\nStatus: install ok installed\nArchitecture: arm64\n"
                      f"Version: {dpkg_jetpack}\nDescription: NVIDIA Jetpack Meta Package")
    (root / "var" / "lib" / "dpkg" / "status").write_text("\n\n".join(blocks) + "\n")
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    (root / "proc" / "meminfo").write_text(f"MemTotal:        {mem_kb} kB\nMemFree:          123456 kB\n")
    cpufreq = root / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    cpufreq.mkdir(parents=True)
    (cpufreq / "scaling_min_freq").write_text(f"{cpu_min_khz}\n")
    (cpufreq / "cpuinfo_max_freq").write_text("1510400\n")
    bin_dir.mkdir()
    if nvpmodel:
        _tool(bin_dir, "nvpmodel", 'if [ "$1" = "-q" ]; then echo "NV Power Mode: 15W"; echo 0; else exit 2; fi')
    _tool(bin_dir, "jetson_clocks", "exit 0")
    return Probe(root=root, search_path=str(bin_dir), disk_path=tmp_path)


# ----------------------------------------------------------------------------------------------
# This machine (no TensorRT, no CUDA device, no Jetson in CI)
# ----------------------------------------------------------------------------------------------

def test_diagnose_this_machine(tmp_path):
    report = diagnose([], _bare_probe(tmp_path))
    assert report.inspected_everything
    assert report.by_name("torch").status == "ok"
    assert report.by_name("torch").facts["version"] == torch.__version__
    assert report.by_name("torch").facts["cuda_build"] == torch.version.cuda
    device = report.by_name("CUDA device")
    assert device.status == ("ok" if torch.cuda.is_available() else "missing")
    import onnxruntime

    runtime = report.by_name("onnxruntime")
    assert runtime.facts["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in runtime.facts["providers"]
    assert runtime.status == ("ok" if "CUDAExecutionProvider" in runtime.facts["providers"]
                              or not torch.cuda.is_available() else "mismatch")
    if importlib.util.find_spec("tensorrt") is None:
        assert report.by_name("tensorrt").status == "missing"
    assert report.by_name("jetson").status == "n/a"
    assert report.by_name("python").facts["version"] == ".".join(map(str, sys.version_info[:3]))
    disk = report.by_name("free disk")
    assert abs(disk.facts["free_bytes"] - shutil.disk_usage(tmp_path).free) < 512 * 1024 ** 2


def test_triton_kernel_runs_where_it_can(tmp_path):
    report = diagnose([], _bare_probe(tmp_path))
    if importlib.util.find_spec("triton") is None:
        assert report.by_name("triton").status == "missing"
        return
    kernel = report.by_name("triton kernel")
    from clippy_rt.kernels._triton_support import triton_interpreting

    if triton_interpreting() or torch.cuda.is_available():
        # The tests run Triton in its interpreter on CPU machines (conftest): the kernel really runs.
        assert kernel.status == "ok", kernel.detail
        assert kernel.facts["mode"] == ("interpreter" if triton_interpreting() else "compiled")
    else:
        assert kernel.status == "n/a" and "TRITON_INTERPRET=1" in kernel.fix


def test_wrong_triton_kernel_result_is_a_mismatch(tmp_path, monkeypatch):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from clippy_rt.kernels._triton_support import triton_interpreting

    if not (triton_interpreting() or torch.cuda.is_available()):
        pytest.skip("Triton runs no kernel in this process (no GPU, not interpreting)")

    def wrong(out_ptr, x_ptr, n, BLOCK: tl.constexpr):  # noqa: F821
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
        mask = offsets < n
        tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * 2.0, mask=mask)  # noqa: F821

    monkeypatch.setattr(doctor, "_probe_kernel", wrong)
    kernel = diagnose([], _bare_probe(tmp_path)).by_name("triton kernel")
    assert kernel.status == "mismatch" and "wrong values" in kernel.detail


def test_native_library_absent_and_broken(tmp_path, monkeypatch):
    from clippy_rt.kernels import native

    missing = tmp_path / "nowhere" / native.LIBRARY_NAME
    monkeypatch.setattr(native, "library_candidates", lambda path=None: [missing])
    line = doctor.check_native(None)[0]
    assert line.status == "missing" and line.fix.startswith("make native")
    assert line.facts["searched"] == [str(missing)]
    broken = tmp_path / native.LIBRARY_NAME
    broken.write_text("not an ELF file")
    monkeypatch.setattr(native, "library_candidates", lambda path=None: [broken])
    line = doctor.check_native(None)[0]
    assert line.status == "mismatch" and "does not load" in line.detail


def test_tensorrt_lines_with_a_fake_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    assert doctor.tensorrt_version() == "10.3.0"
    assert check_tensorrt("10.3.0", ORIN_NANO, "12.6")[0].status == "ok"
    without_gpu = check_tensorrt("10.3.0", None, "12.6")[0]
    assert without_gpu.status == "mismatch"
    absent = check_tensorrt(None, None, "12.6")[0]
    assert absent.status == "missing" and absent.fix == "pip install tensorrt-cu12"
    assert "JetPack" in check_tensorrt(None, ORIN_NANO, "12.6", jetson=True)[0].fix


SAPPHIRE_RAPIDS_CPUINFO = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f "
                           "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\n")
EPYC_AVX2_CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n"


@pytest.mark.parametrize("cpuinfo,vnni,bf16,amx", [(SAPPHIRE_RAPIDS_CPUINFO, True, True, True),
                                                    (EPYC_AVX2_CPUINFO, False, False, False)])
def test_cpu_features_from_cpuinfo(tmp_path, cpuinfo, vnni, bf16, amx):
    probe = _bare_probe(tmp_path)
    (probe.root / "proc").mkdir()
    (probe.root / "proc" / "cpuinfo").write_text(cpuinfo)
    line = doctor.check_cpu(probe)[0]
    assert line.status == "ok"
    assert (line.facts["int8_vnni"], line.facts["bf16"], line.facts["amx"]) == (vnni, bf16, amx)
    assert line.facts["model"] in line.detail
    assert ("no native bf16" in (line.fix or "")) == (not bf16)
    assert ("VNNI" in (line.fix or "")) == (not vnni)


def test_cpu_features_without_cpuinfo_are_not_applicable(tmp_path):
    assert doctor.check_cpu(_bare_probe(tmp_path))[0].status == "n/a"


def test_openvino_line(monkeypatch):
    ov = pytest.importorskip("openvino", reason="needs openvino (pip install 'clippy-rt[openvino]')")
    line = doctor.check_openvino()[0]
    assert line.facts["version"] == ov.__version__
    assert line.facts["cpu_capabilities"] == list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert line.status == ("ok" if importlib.util.find_spec("nncf") else "missing")
    monkeypatch.setitem(sys.modules, "openvino", None)  # an import of it now raises ImportError
    absent = doctor.check_openvino()[0]
    assert absent.status == "missing" and absent.fix == "pip install 'clippy-rt[openvino]'"


def test_onnxruntime_without_cuda_provider_on_a_gpu(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert doctor.check_onnxruntime(None)[0].status == "ok"
    line = doctor.check_onnxruntime(ORIN_NANO)[0]
    assert line.status == "mismatch" and "onnxruntime-gpu" in line.fix
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert doctor.check_onnxruntime(ORIN_NANO)[0].status == "ok"


def test_torch_lines_from_facts():
    ok = check_torch(ORIN_NANO, "2.5.0a0+nv24.08", "12.6", jetson=True)
    assert [f.status for f in ok] == ["ok", "ok"]
    assert "compute capability 8.7" in ok[1].detail and "7.4 GiB" in ok[1].detail and "4.7 GiB free" in ok[1].detail
    cpu_build = check_torch(None, "2.5.0+cpu", None, jetson=True)[1]
    assert cpu_build.status == "missing" and "NVIDIA's torch wheel" in cpu_build.fix
    no_device = check_torch(None, "2.14.1+cu130", "13.0")[1]
    assert no_device.status == "missing" and "--int8" in no_device.fix


def test_broken_check_is_an_error_not_a_crash(tmp_path, monkeypatch):
    def explode(gpu):
        raise RuntimeError("provider table unreadable")

    monkeypatch.setattr(doctor, "check_onnxruntime", explode)
    report = diagnose([], _bare_probe(tmp_path))
    line = report.by_name("onnxruntime")
    assert line.status == "error" and "provider table unreadable" in line.detail
    assert not report.inspected_everything
    # The checks after the broken one still ran.
    assert report.by_name("free disk").status in ("ok", "missing")


def test_low_disk_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "NEEDED_FREE_BYTES", shutil.disk_usage(tmp_path).free * 1000)
    line = doctor.check_disk(Probe(disk_path=tmp_path))[0]
    assert line.status == "missing" and "--out" in line.fix


def test_disk_path_that_is_not_a_writable_directory_is_missing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for path, problem in ((tmp_path / "nonexistent", "does not exist"), (tmp_path / "file", "is not a directory")):
        line = doctor.check_disk(Probe(disk_path=path))[0]
        assert line.status == "missing" and line.detail == f"{path} {problem}", line
        assert "free_bytes" not in line.facts
    assert doctor.check_disk(Probe(disk_path=tmp_path))[0].status in ("ok", "missing")
    from clippy_rt.cli.main import main as cli

    cli(["doctor", "--path", str(tmp_path / "nonexistent")])
    assert f"{tmp_path / 'nonexistent'} does not exist" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Jetson, from faked version files and tools
# ----------------------------------------------------------------------------------------------

def test_jetson_orin_nano_jetpack6(tmp_path):
    probe = _jetson_root(tmp_path)
    lines = {f.name: f for f in check_jetson(probe)}
    release = lines["L4T / JetPack"]
    assert release.status == "ok"
    assert release.facts == {"l4t": "36.3.0", "jetpack": "6.0", "model": "NVIDIA Jetson Orin Nano Developer Kit"}
    memory = lines["memory"]
    assert memory.facts["total_bytes"] == 7_799_212 * 1024 and "fp16" in memory.detail
    power = lines["power mode"]
    assert power.status == "ok" and power.facts == {"mode": "15W", "id": 0}
    clocks = lines["jetson_clocks"]
    assert clocks.facts["pinned"] is False and clocks.fix.startswith("sudo jetson_clocks")


def test_jetpack_from_l4t_table_without_dpkg(tmp_path):
    probe = _jetson_root(tmp_path, release="# R36 (release), REVISION: 4.3, GCID: 38968081", dpkg_jetpack="")
    release = check_jetson(probe)[0]
    assert release.facts["l4t"] == "36.4.3" and release.facts["jetpack"] == "6.2"


def test_jetpack5_is_a_mismatch(tmp_path):
    probe = _jetson_root(tmp_path, release="# R35 (release), REVISION: 4.1, GCID: 33958178", dpkg_jetpack="")
    release = check_jetson(probe)[0]
    assert release.status == "mismatch" and release.facts["jetpack"] == "5.1.2"
    assert "JetPack 6" in release.fix


def test_jetpack_major_from_unlisted_l4t(tmp_path):
    probe = _jetson_root(tmp_path, release="# R32 (release), REVISION: 7.5, GCID: 1", dpkg_jetpack="")
    release = check_jetson(probe)[0]
    assert release.facts["jetpack"] is None and release.status == "mismatch"
    probe = _jetson_root(tmp_path / "r36", release="# R36 (release), REVISION: 9.0, GCID: 1", dpkg_jetpack="")
    release = check_jetson(probe)[0]
    assert release.facts["l4t"] == "36.9.0" and release.status == "ok"


def test_jetson_clocks_pinned_and_nvpmodel_absent(tmp_path):
    probe = _jetson_root(tmp_path, cpu_min_khz=1_510_400, mem_kb=16_000_000, nvpmodel=False)
    lines = {f.name: f for f in check_jetson(probe)}
    assert lines["jetson_clocks"].facts["pinned"] is True and "on:" in lines["jetson_clocks"].detail
    assert lines["power mode"].status == "missing"
    assert "fp16" not in lines["memory"].detail


def test_unreadable_release_is_an_error(tmp_path):
    probe = _jetson_root(tmp_path, release="garbage")
    report = diagnose([], probe)
    assert report.by_name("L4T / JetPack").status == "error"
    assert not report.inspected_everything


def test_jetson_lines_in_the_full_report(tmp_path):
    report = diagnose([], _jetson_root(tmp_path))
    assert report.inspected_everything
    assert {"L4T / JetPack", "memory", "power mode", "jetson_clocks"} <= {f.name for f in report.findings}
    with pytest.raises(KeyError):
        report.by_name("jetson")


# ----------------------------------------------------------------------------------------------
# Engine directories
# ----------------------------------------------------------------------------------------------

def _engine_dir(tmp_path: Path, trt: str = "10.3.0", gpu: str = "Orin", capability=(8, 7)) -> Path:
    path = tmp_path / "engines"
    path.mkdir()
    for name in ("image.plan", "text.plan"):
        (path / name).write_bytes(b"plan")
    sidecar = {"format": "clippy-rt-tensorrt", "format_version": 1, "tensorrt_version": trt, "gpu_name": gpu,
               "compute_capability": list(capability), "precision": "fp16", "config": {}, "logit_scale": 1.0,
               "tokenizer": "spiece.model",
               "plans": {"image": {"file": "image.plan"}, "text": {"file": "text.plan"}},
               "rebuild_command": "clippy-rt build /data/onnx --out /data/engines --fp16"}
    (path / "engine.json").write_text(json.dumps(sidecar))
    return path


def test_engine_matches(tmp_path):
    line = check_engine_dir(_engine_dir(tmp_path), "10.3.0", ORIN_NANO)
    assert line.status == "ok" and "10.3.0" in line.detail
    assert line.facts["compute_capability"] == [8, 7]


def test_engine_from_other_tensorrt(tmp_path):
    line = check_engine_dir(_engine_dir(tmp_path, trt="10.7.0"), "10.3.0", ORIN_NANO)
    assert line.status == "mismatch"
    assert "10.7.0" in line.detail and "10.3.0" in line.detail
    assert line.fix == "clippy-rt build /data/onnx --out /data/engines --fp16"


def test_engine_from_other_gpu(tmp_path):
    line = check_engine_dir(_engine_dir(tmp_path, gpu="NVIDIA GeForce RTX 3090", capability=(8, 6)), "10.3.0",
                            ORIN_NANO)
    assert line.status == "mismatch" and "compute capability 8.6" in line.detail


def test_engine_from_other_gpu_model_same_capability(tmp_path):
    line = check_engine_dir(_engine_dir(tmp_path, gpu="Jetson AGX Orin"), "10.3.0", ORIN_NANO)
    assert line.status == "mismatch" and "Jetson AGX Orin" in line.detail


def test_engine_without_tensorrt_or_gpu(tmp_path):
    path = _engine_dir(tmp_path)
    no_trt = check_engine_dir(path, None, ORIN_NANO)
    assert no_trt.status == "mismatch" and "TensorRT 10.3.0" in no_trt.fix
    assert check_engine_dir(path, "10.3.0", None).status == "mismatch"


def test_engine_plan_missing_and_not_an_engine_dir(tmp_path):
    path = _engine_dir(tmp_path)
    (path / "text.plan").unlink()
    line = check_engine_dir(path, "10.3.0", ORIN_NANO)
    assert line.status == "missing" and "text.plan" in line.detail
    other = check_engine_dir(tmp_path / "nothing", "10.3.0", ORIN_NANO)
    assert other.status == "missing" and other.fix.startswith("clippy-rt build")


# ----------------------------------------------------------------------------------------------
# Report and CLI
# ----------------------------------------------------------------------------------------------

def test_finding_status_validated():
    with pytest.raises(ValueError):
        Finding("x", "x", "fine", "")


def test_format_report_lines():
    report = doctor.Report(findings=(Finding("a", "alpha", "ok", "fine"),
                                     Finding("b", "beta-long", "missing", "gone", "pip install beta")), seconds=0.5)
    lines = format_report(report).splitlines()
    assert lines[0].split() == ["ok", "alpha", "fine"]
    assert lines[1].split() == ["missing", "beta-long", "gone"]
    assert lines[2].split() == ["->", "pip", "install", "beta"]
    assert lines[-1] == "1 ok, 1 missing (0.5 s)"


def test_cli_json_and_text(tmp_path, capsys):
    engines = _engine_dir(tmp_path)
    assert main(["doctor", str(engines), "--path", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inspected_everything"] is True
    names = [f["name"] for f in data["findings"]]
    assert names[:3] == ["python", "torch", "CUDA device"]
    assert f"engine {engines}" in names
    assert sum(data["counts"].values()) == len(data["findings"])
    assert main(["doctor", "--path", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "free disk" in text


def test_cli_exit_status_when_a_check_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_disk", lambda probe: 1 / 0)
    assert main(["doctor", "--path", str(tmp_path)]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_python_older_than_supported(monkeypatch):
    monkeypatch.setattr(doctor, "MIN_PYTHON", (sys.version_info[0], sys.version_info[1] + 1))
    line = doctor.check_python()[0]
    assert line.status == "mismatch" and f"{sys.version_info[0]}.{sys.version_info[1] + 1}" in line.fix
    monkeypatch.setattr(doctor, "MIN_PYTHON", tuple(sys.version_info[:2]))
    assert doctor.check_python()[0].status == "ok"
