"""The engine directory written by ``clippy-rt build``: TensorRT plans plus ``engine.json``.

Layout::

    config.json, spiece.model (or tokenizer.json)   copied from the ONNX directory
    image.plan, text.plan                           serialized engines, one per tower
    engine.json                                     the sidecar: TensorRT version, GPU,
                                                    precision, profiles, plan sizes and
                                                    sha256, config, logit scale, the
                                                    rebuild command

Plans are valid only for the TensorRT version and the GPU model that built them;
``check_sidecar`` compares the sidecar with the running environment before any plan is
deserialized. The builder (``clippy_rt.export.tensorrt``) writes the directory; the
runtime reads it from here. Every TensorRT import is lazy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Tuple

from ..errors import BackendUnavailableError, InputError, ModelDirError
from .onnx_dir import MANIFEST_FILE

SIDECAR_FILE = "engine.json"
SIDECAR_FORMAT = "clippy-rt-tensorrt"
SIDECAR_VERSION = 1
PLAN_SUFFIX = ".plan"
INSTALL_HINT = ("TensorRT is not installed: install NVIDIA's tensorrt Python package for your CUDA "
                "version (on Jetson it comes with JetPack)")


def import_tensorrt():
    """``import tensorrt``, or ``BackendUnavailableError`` saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from exc
    return tensorrt


@dataclass(frozen=True)
class RuntimeEnvironment:
    """What the sidecar is checked against: the running TensorRT and GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]


def check_sidecar(sidecar: Mapping[str, object], env: RuntimeEnvironment, where: Path) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU model.

    TensorRT plans are only valid for the exact TensorRT version that built them, and for
    the GPU model they were tuned on (same compute capability at least). Raises
    ``ModelDirError`` stating both sides and the rebuild command.
    """
    if sidecar.get("format") != SIDECAR_FORMAT or sidecar.get("format_version") != SIDECAR_VERSION:
        raise ModelDirError(f"{where / SIDECAR_FILE} is not a clippy-rt engine sidecar of version {SIDECAR_VERSION}")
    rebuild = sidecar.get("rebuild_command") or "clippy-rt build ONNX_DIR --out ENGINE_DIR"
    problems = []
    if sidecar.get("tensorrt_version") != env.tensorrt_version:
        problems.append(f"built with TensorRT {sidecar.get('tensorrt_version')}, running TensorRT "
                        f"{env.tensorrt_version}")
    built_cc = tuple(sidecar.get("compute_capability") or ())
    if built_cc != tuple(env.compute_capability):
        problems.append(f"built for compute capability {'.'.join(map(str, built_cc))} "
                        f"({sidecar.get('gpu_name')}), this GPU is "
                        f"{'.'.join(map(str, env.compute_capability))} ({env.gpu_name})")
    elif sidecar.get("gpu_name") != env.gpu_name:
        problems.append(f"built on {sidecar.get('gpu_name')}, this GPU is {env.gpu_name} (tactics are "
                        f"tuned per GPU model)")
    if problems:
        raise ModelDirError(f"the engines in {where} cannot run here: {'; '.join(problems)}. Rebuild them on "
                            f"this machine from the ONNX directory: {rebuild}")


def current_environment(trt, device: int) -> RuntimeEnvironment:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs a CUDA GPU, and torch sees none on this machine")
    if device >= torch.cuda.device_count():
        raise InputError(f"CUDA device {device} does not exist ({torch.cuda.device_count()} visible)")
    return RuntimeEnvironment(tensorrt_version=trt.__version__, gpu_name=torch.cuda.get_device_name(device),
                              compute_capability=tuple(torch.cuda.get_device_capability(device)))


def read_sidecar(path: Path) -> Dict[str, object]:
    """Read ``engine.json`` of an engine directory; ``ModelDirError`` if missing or invalid."""
    path = Path(path)
    sidecar_path = path / SIDECAR_FILE
    if not sidecar_path.is_file():
        hint = " (it is an ONNX directory: build engines with `clippy-rt build`)" if (path / MANIFEST_FILE).is_file() else ""
        raise ModelDirError(f"{path} has no {SIDECAR_FILE}: not a TensorRT engine directory{hint}")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{sidecar_path} is not valid JSON: {exc}") from None
    if not isinstance(sidecar, dict):
        raise ModelDirError(f"{sidecar_path} is not a JSON object")
    for key in ("format", "format_version", "plans", "config", "tokenizer", "precision", "logit_scale",
                "tensorrt_version", "gpu_name", "compute_capability"):
        if key not in sidecar:
            raise ModelDirError(f"{sidecar_path} lacks the {key!r} entry")
    return sidecar

