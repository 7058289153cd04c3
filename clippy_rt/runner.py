"""The runner contract: one graph of the I/O spec on one backend.

A runner serves one graph of ``clippy_rt.formats.io_spec``:
``infer_torch(feed) -> {output name: tensor}``. ``Runner.infer_torch`` validates the feed
against the spec first (names, dtypes, ranks, shared axes, the model's constraints), so
the same bad input raises the same ``InputError`` with the same message on every
backend; a backend only implements ``run_torch``. An ``Engine`` is composed of an image
runner and a text runner (``clippy_rt.backends`` builds them).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch

from .config import ClippyConfig
from .formats.io_spec import IMAGE, TEXT, GraphSpec, validate_feed

# I/O spec dtype name -> torch dtype.
TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of an I/O spec dtype name ("float32", "int64", "float16")."""
    return TORCH_DTYPES[name]


class Runner:
    """One graph on one backend. Subclasses implement ``run_torch(feed, dims)``."""

    def __init__(self, graph: GraphSpec, config: ClippyConfig, device: torch.device) -> None:
        self.graph = graph
        self.config = config
        self.device = device

    def validate(self, feed: Mapping[str, object]) -> Dict[str, int]:
        """``InputError`` if ``feed`` does not match the graph's inputs; else the axis sizes it binds."""
        return validate_feed(self.graph, feed, self.config)

    def infer_torch(self, feed: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Validated feed of torch tensors -> {output name: tensor on ``self.device``}."""
        dims = self.validate(feed)
        return self.run_torch(feed, dims)

    def run_torch(self, feed: Mapping[str, torch.Tensor], dims: Dict[str, int]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def image_feed(pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The image graph's feed. Graph inputs are float32 in every precision; any float
    tensor is accepted, as everywhere in the Engine API."""
    (name,) = IMAGE.input_names
    return {name: pixels.float() if pixels.is_floating_point() else pixels}


def text_feed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    return dict(zip(TEXT.input_names, (input_ids, attention_mask)))


def split_image_outputs(outputs: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(patch features [B, N, D], pooled embedding [B, D]) from the image graph's outputs."""
    patch_name, pooled_name = IMAGE.output_names
    return outputs[patch_name], outputs[pooled_name]


def text_output(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    (name,) = TEXT.output_names
    return outputs[name]
