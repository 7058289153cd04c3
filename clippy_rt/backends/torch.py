"""The reference backend: the PyTorch model, eager, loaded from a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

from ..config import ClippyConfig
from ..engine import Engine, resolve_device
from ..errors import ModelDirError
from ..formats.io_spec import IMAGE, TEXT, GraphSpec
from ..formats.kinds import KIND_NAMES, MODEL, find_artifact_kind
from ..precisions import compute_dtype
from ..runner import Runner
from ..validate import check_positive_int
from ..text_cache import TextCache
from ..tokenizer import load_tokenizer


class TorchRunner(Runner):
    """One tower of the torch model as a runner; inputs are moved to the device (pixels
    also to the compute dtype)."""

    def __init__(self, graph: GraphSpec, forward: Callable, config: ClippyConfig, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__(graph, config, device)
        self.forward = forward
        self.dtype = dtype

    @torch.inference_mode()
    def run_torch(self, feed: Mapping[str, torch.Tensor], dims: Dict[str, int]) -> Dict[str, torch.Tensor]:
        args = [feed[name].to(self.device) for name in self.graph.input_names]
        if self.graph is IMAGE:
            args = [arg.to(self.dtype) for arg in args]
        outputs = self.forward(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return dict(zip(self.graph.output_names, outputs))


def load_torch(path, device: str = "cpu", precision: Optional[str] = "fp32", *,
               text_cache: Optional[TextCache] = None, threads: Optional[int] = None) -> Engine:
    """Load a model directory as an Engine over the PyTorch model (``engine.model``), computing
    in ``precision`` ("fp32", "fp16", "bf16"). ``threads``: torch's CPU threads (a
    process-wide setting, ``torch.set_num_threads``). ``ModelDirError`` for an ONNX or engine
    directory (with the backend that loads it) or a bad model directory."""
    from ..formats.model_dir import load_model
    from . import REGISTRY, backend_for_kind

    path = Path(path)
    precision = precision or "fp32"
    kind = find_artifact_kind(path)
    if kind not in (None, MODEL):
        owner = backend_for_kind(kind)
        raise ModelDirError(f"{path} is {KIND_NAMES[kind]}; load it with backend={owner.name!r}")
    resolved_device = resolve_device(device)
    dtype = compute_dtype(precision)
    if threads is not None:
        torch.set_num_threads(check_positive_int("threads", threads))
    model, info = load_model(path)
    tokenizer = load_tokenizer(info.tokenizer, info.config)
    model = model.to(device=resolved_device, dtype=dtype).eval()
    image = TorchRunner(IMAGE, model.encode_image, info.config, resolved_device, dtype)
    text = TorchRunner(TEXT, model.encode_text, info.config, resolved_device, dtype)
    return Engine(image, text, tokenizer, info.config, backend=REGISTRY["torch"], device=resolved_device,
                  precision=precision, logit_scale=float(model.logit_scale.detach()), source=path,
                  text_cache=text_cache, model=model)
