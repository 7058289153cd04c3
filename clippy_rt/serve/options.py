"""Server settings, validated once and shipped to every replica."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from ..backends import backend_record
from ..errors import InputError
from ..validate import check_positive_int
from .protocol import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServeOptions:
    """``model`` is a path string (or "demo") that every replica loads: on a cluster it must
    exist on each node. The replicas answer HTTP on ``host``, one port each from ``port``
    up. ``cpus_per_replica`` is the Ray CPU reservation of a replica; torch uses that many
    threads in it (at least one). On CUDA each replica also takes
    ``1 / replicas_per_gpu`` of a GPU in Ray, so that many replicas share one: while one
    replica decodes requests or encodes answers on the CPU, another can use the GPU."""

    model: str
    backend: str = "torch"
    device: Optional[str] = None
    precision: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    cpus_per_replica: float = 1.0
    replicas_per_gpu: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    address: Optional[str] = None
    # Seconds a stopping replica keeps answering before it closes its port.
    drain_s: float = 1.0
    # Text embeddings on disk: None = the default directory, a path = there, False = memory only.
    text_cache_dir: Union[None, str, bool] = None
    # Python's thread switch interval in each replica, in ms: how long the event loop may keep
    # the GIL from the engine thread that asks for it (Python's own default is 5).
    gil_switch_ms: float = 0.1

    def __post_init__(self) -> None:
        check_positive_int("port", self.port, upper=65535)
        check_positive_int("replicas", self.replicas)
        if self.port + self.replicas - 1 > 65535:
            raise InputError(f"the replicas' ports {self.port}-{self.port + self.replicas - 1} pass 65535: "
                             f"choose a lower port")
        check_positive_int("max_batch", self.max_batch, upper=1024)
        check_positive_int("replicas_per_gpu", self.replicas_per_gpu, upper=16)
        check_positive_int("max_body_bytes", self.max_body_bytes)
        check_positive_int("max_pixels", self.max_pixels)
        if not (isinstance(self.batch_wait_ms, (int, float)) and 0 <= self.batch_wait_ms <= 10_000
                and math.isfinite(self.batch_wait_ms)):
            raise InputError(f"batch_wait_ms must be in [0, 10000], got {self.batch_wait_ms!r}")
        if not (isinstance(self.cpus_per_replica, (int, float)) and self.cpus_per_replica >= 0
                and math.isfinite(self.cpus_per_replica)):
            raise InputError(f"cpus_per_replica must be >= 0, got {self.cpus_per_replica!r}")
        if not (isinstance(self.drain_s, (int, float)) and 0 <= self.drain_s <= 600 and math.isfinite(self.drain_s)):
            raise InputError(f"drain_s must be in [0, 600], got {self.drain_s!r}")
        if not (isinstance(self.gil_switch_ms, (int, float)) and not isinstance(self.gil_switch_ms, bool)
                and 0.001 <= self.gil_switch_ms <= 1000 and math.isfinite(self.gil_switch_ms)):
            raise InputError(f"gil_switch_ms must be in [0.001, 1000], got {self.gil_switch_ms!r}")

    @property
    def uses_cuda(self) -> bool:
        device = self.device or backend_record(self.backend).default_device
        return device.startswith("cuda")

    @property
    def replica_resources(self) -> dict:
        """Ray actor resources of one replica: its CPUs, and its share of a GPU on CUDA."""
        resources = {"num_cpus": self.cpus_per_replica}
        if self.uses_cuda:
            resources["num_gpus"] = 1 / self.replicas_per_gpu
        return resources

    @property
    def threads(self) -> int:
        """torch threads per replica."""
        return max(1, int(self.cpus_per_replica))
