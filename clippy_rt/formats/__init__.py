"""What clippy-rt keeps on disk, read and written in one place.

- ``model_dir``: config.json + weights.safetensors + tokenizer (``clippy-rt convert``).
- ``onnx_dir``: graph files + manifest.json (``clippy-rt export``).
- ``engine_dir``: TensorRT plans + the engine.json sidecar (``clippy-rt build``).
- ``io_spec``: the tensor names, dtypes and axes of every graph.
- ``atomic``: the one atomic file / directory write.
- ``kinds``: ``artifact_kind(path)``, which of the three directories a path is.

The exporter (``clippy_rt.export``) and the runtimes (``clippy_rt.backends``) both import
from here; the runtimes never import the exporter.
"""

from .kinds import ENGINE, KINDS, MODEL, ONNX, artifact_config, artifact_kind, find_artifact_kind

__all__ = ["artifact_kind", "find_artifact_kind", "artifact_config", "KINDS", "MODEL", "ONNX", "ENGINE"]
