"""The machine a benchmark ran on: CPU, GPU, library versions, clocks and power mode.

Everything here is read without side effects and without importing heavy libraries that
are not already needed: versions come from package metadata first. What cannot be read
is left out (or None), never guessed.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

# Distribution names whose version is recorded; TensorRT ships under several names.
_PACKAGES = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_cu12", "tensorrt-lean"),
    "triton": ("triton", "pytorch-triton"),
    "numpy": ("numpy",),
    "pillow": ("pillow", "Pillow"),
    "onnx": ("onnx",),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
    "clippy-rt": ("clippy-rt", "clippy_rt"),
}
_COMMAND_TIMEOUT_S = 5.0


def collect_environment() -> Dict[str, Any]:
    """A JSON-ready description of this machine and software; see BENCH_SCHEMA.md."""
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "memory_bytes": _total_memory(),
        "torch_threads": torch.get_num_threads(),
        "load_average": _load_average(),
        "gpu": gpu_info(),
        "versions": package_versions(),
        "onnxruntime_providers": _onnxruntime_providers(),
        "cpu_governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "jetson": jetson_info(),
    }


def machine_summary(device: Optional[str] = None) -> str:
    """One line for a results file: platform, CPU (cores), torch and its threads, python, the
    load average, and the GPU for a CUDA ``device``. Read by the same functions as
    ``collect_environment``."""
    import torch

    cpu = cpu_info()
    cores = f"{cpu['logical_threads']} logical threads"
    if cpu["physical_cores"]:
        cores += f", {cpu['physical_cores']} physical cores"
    parts = [f"platform {platform.platform()}", f"CPU {cpu['model'] or 'unknown'} ({cores})",
             f"torch {torch.__version__}", f"threads {torch.get_num_threads()}",
             f"python {platform.python_version()}"]
    load = _load_average()
    if load:
        parts.append(f"1-minute load average {load[0]:.2f}")
    if device is not None and str(device).startswith("cuda"):
        gpu = gpu_info()
        if gpu is not None:
            parts.append(f"GPU {gpu['name']} (compute capability {gpu['capability']})")
    return ", ".join(parts)


def cpu_info() -> Dict[str, Any]:
    """model, logical threads, physical cores (where /proc/cpuinfo tells), usable threads."""
    model = None
    physical = set()
    cpuinfo = _read_text("/proc/cpuinfo") or ""
    physical_id = core_id = None
    for line in cpuinfo.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware") and model is None and value:
            model = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not line.strip():
            if core_id is not None:
                physical.add((physical_id, core_id))
            physical_id = core_id = None
    if model is None:
        model = platform.processor() or platform.machine() or None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "model": model,
        "architecture": platform.machine(),
        "logical_threads": os.cpu_count(),
        "physical_cores": len(physical) or None,
        "usable_threads": usable,
        "isa": cpu_isa(cpuinfo),
    }


# CPU features that decide the reduced-precision paths: integer dot products (VNNI) for int8,
# bfloat16 dot products for bf16, and the AMX tile units for both.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: Optional[str] = None) -> List[str]:
    """The first ``flags`` line of ``/proc/cpuinfo`` (or of ``cpuinfo``), split; [] where there is none."""
    text = cpuinfo if cpuinfo is not None else (_read_text("/proc/cpuinfo") or "")
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []


def cpu_isa(cpuinfo: Optional[str] = None) -> List[str]:
    """The ``ISA_FLAGS`` this CPU lists, in that order."""
    flags = set(cpu_flags(cpuinfo))
    return [flag for flag in ISA_FLAGS if flag in flags]


def native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether the CPU computes bfloat16 products natively (AVX512_BF16 or AMX); elsewhere
    torch emulates them, far slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags(cpuinfo)))


def gpu_info() -> Optional[Dict[str, Any]]:
    """The CUDA device torch sees (name, capability, memory), driver, CUDA and cuDNN
    versions, and clocks / power from nvidia-smi where it exists. None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info: Dict[str, Any] = {
        "name": props.name,
        "index": index,
        "count": torch.cuda.device_count(),
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
        "multiprocessors": int(props.multi_processor_count),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": None,
    }
    fields = ["driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit", "pstate",
              "persistence_mode"]
    output = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                   f"--id={index}"])
    if output:
        values = [v.strip() for v in output.splitlines()[0].split(",")]
        if len(values) == len(fields):
            smi = dict(zip(fields, values))
            info["driver"] = smi.pop("driver_version")
            info["clocks"] = smi
    return info


def package_versions() -> Dict[str, Optional[str]]:
    """Installed version of each recorded package, None where it is not installed."""
    versions: Dict[str, Optional[str]] = {}
    for key, names in _PACKAGES.items():
        versions[key] = None
        for name in names:
            try:
                versions[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    if versions["tensorrt"] is None:
        # JetPack installs TensorRT's Python bindings from a Debian package, without metadata.
        versions["tensorrt"] = _module_version("tensorrt")
    return versions


def jetson_info() -> Optional[Dict[str, Any]]:
    """L4T release, nvpmodel power mode and jetson_clocks state on a Jetson; None elsewhere."""
    release = _read_text("/etc/nv_tegra_release")
    if release is None and not Path("/etc/nvpmodel.conf").exists():
        return None
    info: Dict[str, Any] = {"l4t": release.splitlines()[0].strip() if release else None}
    model = _read_text("/proc/device-tree/model")
    info["model"] = model.strip("\x00 \n") if model else None
    mode = _run(["nvpmodel", "-q"])
    info["nvpmodel"] = " / ".join(line.strip() for line in mode.splitlines() if line.strip()) if mode else None
    # jetson_clocks --show needs root on most releases; without it the state stays unknown.
    clocks = _run(["jetson_clocks", "--show"])
    info["jetson_clocks"] = clocks.strip() if clocks else None
    return info


def _onnxruntime_providers() -> Optional[List[str]]:
    try:
        metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        try:
            metadata.version("onnxruntime-gpu")
        except metadata.PackageNotFoundError:
            return None
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def _module_version(module: str) -> Optional[str]:
    if module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    try:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return None
        imported = __import__(module)
    except Exception:  # a broken optional install must not stop the benchmark report
        return None
    return getattr(imported, "__version__", None)


def _load_average() -> Optional[List[float]]:
    """1, 5 and 15 minute load averages: other work on the machine shows up here."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _total_memory() -> Optional[int]:
    meminfo = _read_text("/proc/meminfo")
    if meminfo:
        match = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _read_text(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _run(command: List[str]) -> Optional[str]:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 and done.stdout.strip() else None
