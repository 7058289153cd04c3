"""The backends, and everything clippy-rt knows about each, in one registry.

A backend is a record (``BackendRecord``): the artifact kind it serves, its loader, the pip
extra that provides its dependency, its default device, whether its towers run as torch
modules (which decides the dtype its image graph takes pixels in, whether a stream may
capture its image path in CUDA graphs, and whether a benchmark times the upload apart),
how the identity of its artifact is computed (``clippy_rt.formats.identity``, by
artifact kind), and the precisions it serves. Several backends may serve one artifact
kind (ONNX directories: ONNX Runtime and OpenVINO); one of them is the kind's default,
the backend ``backend_for_kind`` names. A loader reads an
artifact, builds an image runner and a text runner (``clippy_rt.runner``) and composes
them into an ``Engine``. Adding a backend means adding a module here and one record below;
nothing outside this package compares backend names (``tests/test_architecture.py``).

Loader modules are imported on first use, so ``import clippy_rt`` needs none of their
dependencies; a missing dependency is a ``BackendUnavailableError`` naming the extra.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

# Bound under another name: the submodule ``clippy_rt.backends.torch`` takes the name
# ``torch`` in this package once it is imported.
import torch as _torch

from ..errors import BackendUnavailableError, InputError
from ..formats.io_spec import GRAPH_PRECISIONS
from ..formats.kinds import ENGINE, MODEL, ONNX
from ..precisions import COMPUTE_DTYPES


@dataclass(frozen=True)
class BackendRecord:
    """What clippy-rt knows about one backend."""

    name: str
    artifact_kind: str                # the kind of directory it loads (clippy_rt.formats.kinds)
    module: str                       # the module holding the loader
    loader: str                       # its loader: (path, device=, precision=, **options) -> Engine
    extra: Optional[str]              # the pip extra providing its dependency (None: always installed)
    default_device: str
    runs_in_torch: bool               # the towers are torch modules on the engine's device
    made_from: Tuple[str, ...] = ()   # artifact kinds a benchmark may convert into this one first
    precisions: Tuple[str, ...] = ()  # the precisions its loader serves (the artifact may hold fewer)
    kind_default: bool = True         # the backend that loads its artifact kind unless another is named
    int8_export: Optional[str] = None  # the ``export_onnx`` option writing the int8 graphs it runs

    @property
    def cuda_graphs(self) -> bool:
        """Whether a stream may capture the image path in a CUDA graph (torch modules only:
        exported runtimes own their streams)."""
        return self.runs_in_torch

    def pixel_dtype(self, precision: str) -> _torch.dtype:
        """The dtype device pre-processing writes pixels in: a torch tower's compute dtype;
        float32 for exported graphs, whose inputs are float32 in every precision."""
        if self.runs_in_torch and precision in COMPUTE_DTYPES:
            return COMPUTE_DTYPES[precision]
        return _torch.float32

    def load(self, path: Path, device: Optional[str] = None, precision: Optional[str] = None, **options):
        """Import the loader (``BackendUnavailableError`` naming the extra when its dependency
        is missing) and load ``path`` as an Engine."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            if self.extra is None:
                raise
            raise BackendUnavailableError(
                f"backend {self.name!r} needs the {self.name} package ({exc}); "
                f"install it with: pip install 'clippy-rt[{self.extra}]'") from exc
        return getattr(module, self.loader)(path, device=device or self.default_device, precision=precision,
                                            **options)


_RECORDS = (
    BackendRecord("torch", MODEL, "clippy_rt.backends.torch", "load_torch", None, "cpu", runs_in_torch=True,
                  precisions=tuple(COMPUTE_DTYPES)),
    BackendRecord("onnxruntime", ONNX, "clippy_rt.backends.onnxruntime", "load_onnxruntime", "onnx", "cpu",
                  runs_in_torch=False, made_from=(MODEL,), precisions=GRAPH_PRECISIONS, int8_export="int8"),
    BackendRecord("tensorrt", ENGINE, "clippy_rt.backends.tensorrt", "load_tensorrt", None, "cuda",
                  runs_in_torch=False, precisions=("fp32", "fp16")),
    # The same ONNX directories on OpenVINO's CPU plugin: bf16 through the inference
    # precision hint, int8 from the directory's NNCF-quantised graphs.
    BackendRecord("openvino", ONNX, "clippy_rt.backends.openvino", "load_openvino", "openvino", "cpu",
                  runs_in_torch=False, made_from=(MODEL,), precisions=("fp32", "bf16", "int8"),
                  kind_default=False, int8_export="openvino_int8"),
)
REGISTRY = {record.name: record for record in _RECORDS}
BACKENDS = tuple(REGISTRY)
# The reference: the backend that reads model directories, at this precision. Accuracy
# figures of every other backend and precision are measured against it.
REFERENCE = REGISTRY["torch"]
REFERENCE_PRECISION = "fp32"


def physical_cores() -> int:
    """Physical cores available to this process (hyper-thread siblings counted once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def is_reference(backend: str, precision: str) -> bool:
    """Whether an engine of ``backend`` at ``precision`` is the reference (torch fp32)."""
    return backend == REFERENCE.name and precision == REFERENCE_PRECISION


def backend_record(name: str) -> BackendRecord:
    """The record of backend ``name``; ``InputError`` naming the choices for any other value."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return REGISTRY[name]


def backends_for_kind(kind: str) -> Tuple[BackendRecord, ...]:
    """Every backend that loads directories of artifact ``kind``, the default first."""
    return tuple(sorted((r for r in _RECORDS if r.artifact_kind == kind), key=lambda r: not r.kind_default))


def backend_for_kind(kind: str) -> BackendRecord:
    """The default backend for directories of artifact ``kind``."""
    for record in _RECORDS:
        if record.artifact_kind == kind and record.kind_default:
            return record
    raise InputError(f"no backend loads artifacts of kind {kind!r}")
