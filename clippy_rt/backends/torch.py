"""The reference backend: the PyTorch model, eager, loaded from a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

from ..config import ClippyConfig
from ..engine import Engine, resolve_device, resolve_precision
from ..errors import ModelDirError
from ..formats.io_spec import IMAGE, TEXT, GraphSpec
from ..formats.kinds import ENGINE, ONNX, find_artifact_kind
from ..tokenizer import Tokenizer, load_tokenizer
from .base import Runner


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


class TorchEngine(Engine):
    """The Engine API over the PyTorch model."""

    backend = "torch"

    def __init__(self, model, config: ClippyConfig, tokenizer: Tokenizer, device: torch.device,
                 precision: str, source: Path) -> None:
        super().__init__(config, tokenizer, float(model.logit_scale.detach()), device, precision, source)
        self.dtype = resolve_precision(precision)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.image_runner = TorchRunner(IMAGE, self.model.encode_image, config, device, self.dtype)
        self.text_runner = TorchRunner(TEXT, self.model.encode_text, config, device, self.dtype)


def load_torch(path, device: str = "cpu", precision: Optional[str] = "fp32") -> TorchEngine:
    """Load a model directory as a TorchEngine. ``ModelDirError`` for an ONNX or engine
    directory (with the backend that loads it) or a bad model directory."""
    from ..formats.model_dir import load_model

    path = Path(path)
    precision = precision or "fp32"
    kind = find_artifact_kind(path)
    if kind == ONNX:
        raise ModelDirError(f"{path} is an ONNX directory; load it with backend='onnxruntime'")
    if kind == ENGINE:
        raise ModelDirError(f"{path} is a TensorRT engine directory; load it with backend='tensorrt'")
    resolved_device = resolve_device(device)
    resolve_precision(precision)
    model, info = load_model(path)
    tokenizer = load_tokenizer(info.tokenizer, info.config)
    return TorchEngine(model, info.config, tokenizer, resolved_device, precision, path)
