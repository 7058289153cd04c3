"""What this machine can run, and why not: the checks behind ``clippy-rt doctor``.

Each check yields ``Finding`` lines with a status:

- ``ok``: present and working;
- ``missing``: not installed or not present (the ``fix`` says how to get it);
- ``mismatch``: present but unusable as it is (a wrong build, version or ABI; an engine
  built for another TensorRT or GPU), with the command that fixes it;
- ``n/a``: does not apply to this machine (Jetson lines elsewhere, a kernel check without
  any device to run it on);
- ``error``: the check itself could not inspect what it looks at.

``diagnose`` runs every check; a check that raises becomes an ``error`` line instead of
stopping the others. Its report ``inspected_everything`` when no line is ``error``, which
is what the command's exit status says: missing or mismatched parts are findings, not
failures of the doctor.

Paths of system files (``/etc/nv_tegra_release``, dpkg's status file, ``/proc`` and
``/sys`` entries) are read below ``Probe.root`` and tools (``nvpmodel``,
``jetson_clocks``) are looked up on ``Probe.search_path``, so that other machines' files
can be inspected (and faked in tests).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

STATUSES = ("ok", "missing", "mismatch", "n/a", "error")

# About what one clippy-b16 deployment writes: an ONNX directory with float32, float16 and
# int8 graphs (~0.8 + 0.4 + 0.2 GB) and one float16 engine directory (~0.4 GB).
NEEDED_FREE_BYTES = 2 * 1024 ** 3
MIN_PYTHON = (3, 9)
MIN_JETPACK_MAJOR = 6
# L4T release -> JetPack release, for boards where the nvidia-jetpack package (whose
# version is read first) is not installed.
L4T_TO_JETPACK = {
    "36.4.4": "6.2.1", "36.4.3": "6.2", "36.4.0": "6.1", "36.3.0": "6.0", "36.2.0": "6.0 DP",
    "35.6.0": "5.1.4", "35.5.0": "5.1.3", "35.4.1": "5.1.2", "35.3.1": "5.1.1", "35.2.1": "5.1",
    "35.1.0": "5.0.2",
}
# L4T major release -> JetPack major release, for L4T releases missing from the table above.
L4T_MAJOR_TO_JETPACK_MAJOR = {32: 4, 34: 5, 35: 5, 36: 6}
JETSON_GUIDE = "docs/jetson.md"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, its status, what was seen, and the
    command that fixes (or changes) it. ``facts`` holds the raw values for ``--json``."""

    section: str
    name: str
    status: str
    detail: str
    fix: Optional[str] = None
    facts: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> Dict[str, object]:
        return {"section": self.section, "name": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix, "facts": dict(self.facts)}


@dataclass(frozen=True)
class Report:
    findings: Tuple[Finding, ...]
    seconds: float

    @property
    def inspected_everything(self) -> bool:
        return all(f.status != "error" for f in self.findings)

    def by_name(self, name: str) -> Finding:
        for finding in self.findings:
            if finding.name == name:
                return finding
        raise KeyError(name)

    def to_dict(self) -> Dict[str, object]:
        counts = {status: sum(f.status == status for f in self.findings) for status in STATUSES}
        return {"inspected_everything": self.inspected_everything, "seconds": round(self.seconds, 3),
                "counts": counts, "findings": [f.to_dict() for f in self.findings]}


@dataclass(frozen=True)
class Probe:
    """Where the checks look.

    ``root``: the directory that stands for ``/`` when reading system files.
    ``search_path``: the PATH for command-line tools (None: this process's PATH).
    ``disk_path``: where engines and ONNX directories would be written (free space).
    ``command_timeout_s``: the longest a tool may take to answer.
    """

    root: Path = Path("/")
    search_path: Optional[str] = None
    disk_path: Path = Path(".")
    command_timeout_s: float = 3.0

    def file(self, absolute: str) -> Path:
        return Path(self.root) / absolute.lstrip("/")

    def read(self, absolute: str) -> Optional[str]:
        try:
            return self.file(absolute).read_text(errors="replace")
        except OSError:
            return None

    def which(self, tool: str) -> Optional[str]:
        return shutil.which(tool, path=self.search_path)

    def run(self, argv: Sequence[str]) -> Tuple[int, str]:
        """(exit status, stdout + stderr) of a tool found on ``search_path``."""
        executable = self.which(argv[0])
        if executable is None:
            raise FileNotFoundError(argv[0])
        done = subprocess.run([executable, *argv[1:]], capture_output=True, text=True,
                              timeout=self.command_timeout_s, check=False)
        return done.returncode, (done.stdout or "") + (done.stderr or "")


@dataclass(frozen=True)
class GpuFacts:
    """The CUDA device torch sees."""

    name: str
    capability: Tuple[int, int]
    total_bytes: int
    free_bytes: Optional[int] = None

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


def _gib(value: int) -> str:
    return f"{value / 1024 ** 3:.1f} GiB"


# ----------------------------------------------------------------------------------------------
# Python and torch
# ----------------------------------------------------------------------------------------------

def check_python() -> List[Finding]:
    version = sys.version_info[:3]
    text = ".".join(map(str, version))
    facts = {"version": text, "executable": sys.executable, "machine": platform.machine()}
    if tuple(version[:2]) < MIN_PYTHON:
        return [Finding("python", "python", "mismatch", f"{text}; clippy-rt needs >= "
                        f"{'.'.join(map(str, MIN_PYTHON))}",
                        f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer, then pip install -e . in it",
                        facts)]
    return [Finding("python", "python", "ok", f"{text} ({platform.machine()}, {sys.executable})", facts=facts)]


def gpu_facts() -> Optional[GpuFacts]:
    """The current CUDA device, or None when torch sees none."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    try:
        free, _ = torch.cuda.mem_get_info(index)
    except RuntimeError:
        free = None
    return GpuFacts(name=props.name, capability=(props.major, props.minor), total_bytes=int(props.total_memory),
                    free_bytes=None if free is None else int(free))


def check_torch(gpu: Optional[GpuFacts], torch_version: str, cuda_build: Optional[str],
                jetson: bool = False) -> List[Finding]:
    """The torch line and the CUDA device line, from the given facts."""
    build = f"CUDA {cuda_build} build" if cuda_build else "CPU-only build"
    findings = [Finding("torch", "torch", "ok", f"{torch_version} ({build})",
                        facts={"version": torch_version, "cuda_build": cuda_build})]
    cpu_path = "on the CPU: clippy-rt export MODEL --out DIR --int8, then --backend onnxruntime --precision int8"
    if gpu is not None:
        memory = _gib(gpu.total_bytes) + (f", {_gib(gpu.free_bytes)} free" if gpu.free_bytes is not None else "")
        findings.append(Finding("torch", "CUDA device", "ok",
                                f"{gpu.name}, compute capability {gpu.capability_text}, {memory}",
                                facts={"name": gpu.name, "capability": gpu.capability_text,
                                       "total_bytes": gpu.total_bytes, "free_bytes": gpu.free_bytes}))
    elif cuda_build is None:
        fix = (f"install NVIDIA's torch wheel for your JetPack ({JETSON_GUIDE})" if jetson else
               f"install a CUDA build of torch for a GPU (pip install torch); {cpu_path}")
        findings.append(Finding("torch", "CUDA device", "missing", "this torch has no CUDA support", fix))
    else:
        findings.append(Finding("torch", "CUDA device", "missing",
                                f"no CUDA device visible to this CUDA {cuda_build} build",
                                f"check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES; {cpu_path}"))
    return findings


# ----------------------------------------------------------------------------------------------
# Kernels: Triton and the CUDA C++ library
# ----------------------------------------------------------------------------------------------

def _probe_kernel(out_ptr, x_ptr, n, BLOCK: tl.constexpr):  # noqa: F821
    """out[i] = 2 * x[i] + 1 for i < n."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821  (bound by _triton_support.jit)
    mask = offsets < n
    values = tl.load(x_ptr + offsets, mask=mask)  # noqa: F821
    tl.store(out_ptr + offsets, values * 2.0 + 1.0, mask=mask)  # noqa: F821


def check_triton(gpu: Optional[GpuFacts], jetson: bool = False) -> List[Finding]:
    """Triton importable, then a tiny kernel compiled and run on the GPU (or in Triton's
    interpreter on the CPU when it was loaded in that mode)."""
    from clippy_rt.errors import BackendUnavailableError
    from clippy_rt.kernels import _triton_support as support

    try:
        triton = support.load_triton()
    except BackendUnavailableError as exc:
        cause = exc.__cause__ or exc
        fix = ("Triton has no Jetson wheels: build the CUDA C++ library instead (make native)" if jetson
               else "pip install triton (it comes with CUDA builds of torch)")
        return [Finding("kernels", "triton", "missing", f"does not import: {cause!r}"[:200], fix)]
    version = getattr(triton, "__version__", "?")
    findings = [Finding("kernels", "triton", "ok", f"{version} imports", facts={"version": version})]
    interpreting = support.triton_interpreting()
    if not interpreting and gpu is None:
        findings.append(Finding("kernels", "triton kernel", "n/a",
                                "no GPU: nothing to compile for; on the CPU the kernels run their torch "
                                "references", "TRITON_INTERPRET=1 clippy-rt doctor (runs the check in "
                                "Triton's interpreter)", {"mode": "none"}))
        return findings
    import torch

    device = torch.device("cpu") if interpreting else torch.device("cuda", torch.cuda.current_device())
    where = "in the interpreter on the CPU" if interpreting else f"on {gpu.name if gpu else device}"
    x = torch.arange(1000, dtype=torch.float32, device=device)
    out = torch.empty_like(x)
    start = time.perf_counter()
    try:
        kernel = support.jit(_probe_kernel)
        with support.device_guard(x):
            kernel[(triton.cdiv(1000, 256),)](out, x, 1000, BLOCK=256)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # a compiler or driver failure: exactly what this check looks for
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return findings + [Finding("kernels", "triton kernel", "mismatch", f"failed {where}: {message}"[:300],
                                   "install the triton version that matches this torch "
                                   "(pip install --force-reinstall torch)")]
    seconds = time.perf_counter() - start
    if not torch.equal(out.cpu(), x.cpu() * 2 + 1):
        return findings + [Finding("kernels", "triton kernel", "mismatch", f"ran {where} but computed wrong values",
                                   "install the triton version that matches this torch")]
    mode = "interpreter" if interpreting else "compiled"
    findings.append(Finding("kernels", "triton kernel", "ok", f"compiled and ran {where} ({seconds:.2f} s)"
                            if not interpreting else f"ran {where} ({seconds:.2f} s)",
                            facts={"mode": mode, "seconds": round(seconds, 3)}))
    return findings


def check_native(gpu: Optional[GpuFacts]) -> List[Finding]:
    """The CUDA C++ library: found, loads, and has this package's ABI version."""
    from clippy_rt.errors import BackendUnavailableError
    from clippy_rt.kernels import native

    candidates = native.library_candidates()
    found = next((c for c in candidates if c.is_file()), None)
    use = "" if gpu is not None else " (used on CUDA devices only)"
    if found is None:
        return [Finding("kernels", "CUDA C++ library", "missing",
                        f"{native.LIBRARY_NAME} not built{use}", "make native (in the source tree)",
                        {"searched": [str(c) for c in candidates]})]
    try:
        library = native.load_native()
    except BackendUnavailableError as exc:
        return [Finding("kernels", "CUDA C++ library", "mismatch", str(exc).splitlines()[0][:300],
                        "make native (rebuilds it for this machine)", {"path": str(found)})]
    abi = int(library.clippy_rt_native_abi_version())
    return [Finding("kernels", "CUDA C++ library", "ok", f"{found} loads, ABI version {abi}",
                    facts={"path": str(found), "abi_version": abi})]


# ----------------------------------------------------------------------------------------------
# ONNX Runtime and TensorRT
# ----------------------------------------------------------------------------------------------

def check_onnxruntime(gpu: Optional[GpuFacts]) -> List[Finding]:
    try:
        import onnxruntime
    except ImportError as exc:
        return [Finding("runtimes", "onnxruntime", "missing", f"does not import ({exc})",
                        "pip install 'clippy-rt[onnx]'")]
    providers = list(onnxruntime.get_available_providers())
    facts = {"version": onnxruntime.__version__, "providers": providers}
    detail = f"{onnxruntime.__version__}, providers: {', '.join(providers)}"
    if gpu is not None and "CUDAExecutionProvider" not in providers:
        return [Finding("runtimes", "onnxruntime", "mismatch", detail + " (no CUDA provider for this GPU)",
                        "pip uninstall -y onnxruntime && pip install onnxruntime-gpu", facts)]
    return [Finding("runtimes", "onnxruntime", "ok", detail, facts=facts)]


def check_openvino() -> List[Finding]:
    """The openvino line: version, the CPU plugin's optimisation capabilities, NNCF (for int8 graphs)."""
    try:
        import openvino
    except ImportError as exc:
        return [Finding("runtimes", "openvino", "missing", f"does not import ({exc}); the openvino backend "
                        f"needs it", "pip install 'clippy-rt[openvino]'")]
    capabilities = list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    try:
        import nncf
        nncf_version = nncf.__version__
    except ImportError:
        nncf_version = None
    facts = {"version": openvino.__version__, "cpu_capabilities": capabilities, "nncf": nncf_version}
    detail = f"{openvino.__version__}, CPU plugin: {', '.join(capabilities)}"
    if nncf_version is None:
        return [Finding("runtimes", "openvino", "missing", detail + "; no nncf, so no int8 graphs can be made "
                        "(`clippy-rt export --openvino-int8`)", "pip install 'clippy-rt[openvino]'", facts)]
    return [Finding("runtimes", "openvino", "ok", f"{detail}; nncf {nncf_version}", facts=facts)]


def check_cpu(probe: Probe) -> List[Finding]:
    """The CPU line: model and the instructions the reduced-precision paths use (VNNI for
    int8, AVX512_BF16 or AMX for bf16), read from ``/proc/cpuinfo`` below ``probe.root``."""
    from .bench.environment import cpu_isa

    text = probe.read("/proc/cpuinfo")
    if text is None:
        return [Finding("cpu", "CPU features", "n/a", "no /proc/cpuinfo here: the CPU's features are not known")]
    model = next((line.partition(":")[2].strip() for line in text.splitlines()
                  if line.partition(":")[0].strip() in ("model name", "Model", "Hardware")), "unknown CPU")
    isa = cpu_isa(text)
    vnni = any(flag in isa for flag in ("avx512_vnni", "avx_vnni"))
    bf16 = any(flag in isa for flag in ("avx512_bf16", "amx_bf16"))
    amx = any(flag.startswith("amx") for flag in isa)
    facts = {"model": model, "isa": isa, "int8_vnni": vnni, "bf16": bf16, "amx": amx}
    detail = (f"{model}: {', '.join(isa) or 'none of AVX2, AVX-512, VNNI, BF16, AMX'}; int8 dot products "
              f"(VNNI) {'yes' if vnni else 'no'}, bf16 {'yes' if bf16 else 'no'}, AMX {'yes' if amx else 'no'}")
    notes = []
    if not bf16:
        notes.append("no native bf16: OpenVINO refuses it and torch emulates it (slower than fp32); use fp32 or int8")
    if not vnni:
        notes.append("no VNNI: ONNX Runtime's int8 products add pairs in 16 bits and can saturate; check "
                     "the agreement with clippy-rt eval --precision int8")
    return [Finding("cpu", "CPU features", "ok", detail, "; ".join(notes) or None, facts)]


def tensorrt_version() -> Optional[str]:
    """The version of the importable ``tensorrt`` module, or None."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(getattr(tensorrt, "__version__", "unknown version"))


def check_tensorrt(version: Optional[str], gpu: Optional[GpuFacts], cuda_build: Optional[str],
                   jetson: bool = False) -> List[Finding]:
    if version is None:
        if jetson:
            fix = "sudo apt install nvidia-tensorrt python3-libnvinfer (TensorRT comes with JetPack)"
        elif cuda_build:
            fix = f"pip install tensorrt-cu{cuda_build.split('.')[0]}"
        else:
            fix = "a CUDA GPU and a CUDA build of torch first, then pip install tensorrt"
        return [Finding("runtimes", "tensorrt", "missing", "not installed (engines cannot be built or run here)", fix)]
    if gpu is None:
        return [Finding("runtimes", "tensorrt", "mismatch", f"{version} installed, but torch sees no CUDA device",
                        "see the CUDA device line", {"version": version})]
    return [Finding("runtimes", "tensorrt", "ok", version, facts={"version": version})]


def check_engine_dir(path: Path, trt_version: Optional[str], gpu: Optional[GpuFacts]) -> Finding:
    """Whether the engines in ``path`` run here: its ``engine.json`` against this TensorRT and GPU."""
    from clippy_rt.errors import ModelDirError
    from clippy_rt.formats.engine_dir import RuntimeEnvironment, check_sidecar, read_sidecar

    name = f"engine {path}"
    build = "clippy-rt build ONNX_DIR --out ENGINE_DIR"
    try:
        sidecar = read_sidecar(Path(path))
    except ModelDirError as exc:
        return Finding("engines", name, "missing", str(exc), build)
    rebuild = str(sidecar.get("rebuild_command") or build)
    built = (f"built with TensorRT {sidecar['tensorrt_version']} for {sidecar['gpu_name']} "
             f"(compute capability {'.'.join(map(str, sidecar['compute_capability']))}), {sidecar.get('precision')}")
    facts = {"tensorrt_version": sidecar["tensorrt_version"], "gpu_name": sidecar["gpu_name"],
             "compute_capability": list(sidecar["compute_capability"]), "precision": sidecar.get("precision")}
    if trt_version is None:
        return Finding("engines", name, "mismatch", f"{built}; TensorRT is not installed here",
                       f"install TensorRT {sidecar['tensorrt_version']}, or on this machine's TensorRT: {rebuild}",
                       facts)
    if gpu is None:
        return Finding("engines", name, "mismatch", f"{built}; no CUDA device here", "see the CUDA device line", facts)
    environment = RuntimeEnvironment(tensorrt_version=trt_version, gpu_name=gpu.name, compute_capability=gpu.capability)
    try:
        check_sidecar(sidecar, environment, Path(path))
    except ModelDirError as exc:
        reason = str(exc).split(": ", 1)[-1].split(". Rebuild", 1)[0]
        return Finding("engines", name, "mismatch", reason, rebuild, facts)
    plans = sidecar.get("plans") or {}
    absent = [str(entry.get("file")) for entry in plans.values()
              if isinstance(entry, dict) and not (Path(path) / str(entry.get("file"))).is_file()]
    if absent:
        return Finding("engines", name, "missing", f"{built}; plan files missing: {', '.join(absent)}", rebuild, facts)
    return Finding("engines", name, "ok", f"{built}: matches this TensorRT and GPU", facts=facts)


# ----------------------------------------------------------------------------------------------
# Jetson
# ----------------------------------------------------------------------------------------------

def parse_l4t_release(text: str) -> Optional[str]:
    """``# R36 (release), REVISION: 3.0, ...`` -> ``"36.3.0"``; None if unrecognised."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    return ".".join(match.groups()) if match else None


def dpkg_version(status_text: str, package: str) -> Optional[str]:
    """The installed version of ``package`` in a dpkg status file, or None."""
    for block in status_text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Package") == package and "installed" in fields.get("Status", "installed"):
            return fields.get("Version")
    return None


def jetpack_release(l4t: str, dpkg_status: Optional[str]) -> Optional[str]:
    """JetPack release: the nvidia-jetpack package's version (``6.0+b106`` -> ``6.0``), else
    the L4T table."""
    if dpkg_status:
        version = dpkg_version(dpkg_status, "nvidia-jetpack")
        if version:
            return re.split(r"[+-]", version)[0]
    return L4T_TO_JETPACK.get(l4t)


def is_jetson(probe: Probe) -> bool:
    return probe.file("/etc/nv_tegra_release").is_file()


def check_jetson(probe: Probe) -> List[Finding]:
    """L4T / JetPack, the board, the nvpmodel power mode and jetson_clocks (Jetson only)."""
    release_text = probe.read("/etc/nv_tegra_release")
    if release_text is None:
        return [Finding("jetson", "jetson", "n/a", "not a Jetson (no /etc/nv_tegra_release)")]
    findings = [_check_release(probe, release_text)]
    findings.append(_check_memory(probe))
    findings.append(_check_nvpmodel(probe))
    findings.append(_check_jetson_clocks(probe))
    return findings


def _check_release(probe: Probe, release_text: str) -> Finding:
    l4t = parse_l4t_release(release_text)
    if l4t is None:
        return Finding("jetson", "L4T / JetPack", "error",
                       f"/etc/nv_tegra_release not recognised: {release_text.strip().splitlines()[0][:120]!r}")
    jetpack = jetpack_release(l4t, probe.read("/var/lib/dpkg/status"))
    model = (probe.read("/proc/device-tree/model") or "").strip("\x00 \n") or "unknown board"
    facts = {"l4t": l4t, "jetpack": jetpack, "model": model}
    detail = f"{model}: L4T {l4t}, JetPack {jetpack or 'unknown'}"
    major = int(jetpack.split(".")[0]) if jetpack else L4T_MAJOR_TO_JETPACK_MAJOR.get(int(l4t.split(".")[0]), 0)
    if major < MIN_JETPACK_MAJOR:
        return Finding("jetson", "L4T / JetPack", "mismatch",
                       detail + f" (this guide needs JetPack {MIN_JETPACK_MAJOR})", f"flash JetPack 6 with NVIDIA SDK Manager ({JETSON_GUIDE})", facts)
    return Finding("jetson", "L4T / JetPack", "ok", detail, facts=facts)


def _check_memory(probe: Probe) -> Finding:
    meminfo = probe.read("/proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
    if not match:
        return Finding("jetson", "memory", "error", "/proc/meminfo has no MemTotal line")
    total = int(match.group(1)) * 1024
    facts = {"total_bytes": total}
    if total <= 8.5 * 1024 ** 3:
        return Finding("jetson", "memory", "ok", f"{_gib(total)} shared by CPU and GPU: use fp16 engines, "
                       f"batch 1 and the on-disk text cache ({JETSON_GUIDE})",
                       "clippy-rt build ONNX_DIR --out ENGINE_DIR --fp16", facts)
    return Finding("jetson", "memory", "ok", f"{_gib(total)} shared by CPU and GPU", facts=facts)


def _check_nvpmodel(probe: Probe) -> Finding:
    if probe.which("nvpmodel") is None:
        return Finding("jetson", "power mode", "missing", "nvpmodel not found", "sudo apt install nvidia-l4t-nvpmodel")
    code, output = probe.run(["nvpmodel", "-q"])
    match = re.search(r"NV Power Mode:\s*(.+)", output)
    if code != 0 or not match:
        return Finding("jetson", "power mode", "error", f"nvpmodel -q answered {code}: {output.strip()[:120]!r}")
    mode = match.group(1).strip()
    number = next((line.strip() for line in output[match.end():].splitlines() if line.strip().isdigit()), None)
    facts = {"mode": mode, "id": int(number) if number is not None else None}
    return Finding("jetson", "power mode", "ok", f"nvpmodel {mode}" + (f" (mode {number})" if number else ""),
                   "sudo nvpmodel -m N to change it (list: nvpmodel -p --verbose); record it with every figure",
                   facts)


def _check_jetson_clocks(probe: Probe) -> Finding:
    if probe.which("jetson_clocks") is None:
        return Finding("jetson", "jetson_clocks", "missing", "jetson_clocks not found",
                       "sudo apt install nvidia-l4t-tools")
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    low, high = probe.read(cpufreq + "scaling_min_freq"), probe.read(cpufreq + "cpuinfo_max_freq")
    if low is None or high is None:
        return Finding("jetson", "jetson_clocks", "error", f"cannot read {cpufreq}scaling_min_freq / cpuinfo_max_freq")
    low_khz, high_khz = int(low.strip()), int(high.strip())
    facts = {"cpu0_min_khz": low_khz, "cpu0_max_khz": high_khz, "pinned": low_khz >= high_khz}
    if low_khz >= high_khz:
        return Finding("jetson", "jetson_clocks", "ok", f"on: CPU clocks pinned at {high_khz / 1000:.0f} MHz",
                       "sudo jetson_clocks --restore to release them", facts)
    return Finding("jetson", "jetson_clocks", "ok", f"off: CPU clocks scale between {low_khz / 1000:.0f} and "
                   f"{high_khz / 1000:.0f} MHz (latency varies)", "sudo jetson_clocks (pins clocks for benchmarks)",
                   facts)


# ----------------------------------------------------------------------------------------------
# Disk and the whole report
# ----------------------------------------------------------------------------------------------

def check_disk(probe: Probe) -> List[Finding]:
    path = Path(probe.disk_path)
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        problem = ("does not exist" if not path.exists() else "is not a directory" if not path.is_dir()
                   else "is not writable")
        return [Finding("disk", "free disk", "missing", f"{path} {problem}",
                        "give --path an existing directory you can write to", {"path": str(path)})]
    usage = shutil.disk_usage(path)
    facts = {"path": str(path.resolve()), "free_bytes": usage.free, "needed_bytes": NEEDED_FREE_BYTES}
    detail = f"{_gib(usage.free)} free at {path.resolve()}"
    if usage.free < NEEDED_FREE_BYTES:
        return [Finding("disk", "free disk", "missing", f"{detail}; a clippy-b16 ONNX directory and engine need "
                        f"about {_gib(NEEDED_FREE_BYTES)}", "free space, or write with --out on another disk", facts)]
    return [Finding("disk", "free disk", "ok", detail, facts=facts)]


def _guarded(section: str, name: str, check: Callable[[], List[Finding]]) -> List[Finding]:
    try:
        return check()
    except Exception as exc:  # one broken check must not hide the others
        return [Finding(section, name, "error", f"the check failed: {type(exc).__name__}: {exc}"[:300])]


def diagnose(engine_dirs: Sequence[Path] = (), probe: Probe = Probe()) -> Report:
    """Run every check (see the module doc); returns the Report."""
    start = time.perf_counter()
    import torch

    findings: List[Finding] = []
    jetson = is_jetson(probe)
    findings += _guarded("python", "python", check_python)
    gpu_holder: List[Optional[GpuFacts]] = [None]

    def torch_lines() -> List[Finding]:
        gpu_holder[0] = gpu_facts()
        return check_torch(gpu_holder[0], torch.__version__, torch.version.cuda, jetson)

    findings += _guarded("torch", "torch", torch_lines)
    findings += _guarded("cpu", "CPU features", lambda: check_cpu(probe))
    gpu = gpu_holder[0]
    findings += _guarded("kernels", "triton", lambda: check_triton(gpu, jetson))
    findings += _guarded("kernels", "CUDA C++ library", lambda: check_native(gpu))
    findings += _guarded("runtimes", "onnxruntime", lambda: check_onnxruntime(gpu))
    findings += _guarded("runtimes", "openvino", check_openvino)
    trt_holder: List[Optional[str]] = [None]

    def tensorrt_lines() -> List[Finding]:
        trt_holder[0] = tensorrt_version()
        return check_tensorrt(trt_holder[0], gpu, torch.version.cuda, jetson)

    findings += _guarded("runtimes", "tensorrt", tensorrt_lines)
    findings += _guarded("jetson", "jetson", lambda: check_jetson(probe))
    findings += _guarded("disk", "free disk", lambda: check_disk(probe))
    for path in engine_dirs:
        findings += _guarded("engines", f"engine {path}", lambda: [check_engine_dir(Path(path), trt_holder[0], gpu)])
    return Report(findings=tuple(findings), seconds=time.perf_counter() - start)


def format_report(report: Report) -> str:
    """The report as aligned text lines: status, name, detail, then the fix indented."""
    width = max(len(f.name) for f in report.findings)
    lines = []
    for finding in report.findings:
        lines.append(f"{finding.status:<8}  {finding.name:<{width}}  {finding.detail}")
        if finding.fix:
            lines.append(f"{'':<8}  {'':<{width}}  -> {finding.fix}")
    counts = ", ".join(f"{sum(f.status == s for f in report.findings)} {s}" for s in STATUSES
                       if any(f.status == s for f in report.findings))
    lines.append("")
    lines.append(f"{counts} ({report.seconds:.1f} s)")
    return "\n".join(lines)
