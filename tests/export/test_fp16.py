"""The float16 conversion: which nodes run in float16, and that the policy keeps T5 finite.

Float16 numerics are evaluated with onnx.reference.ReferenceEvaluator, which computes
float16 ops in float16 (ONNX Runtime's CPU provider would run most of them in float32).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from clippy_rt.tokenizer import load_tokenizer  # noqa: E402
from clippy_rt.export.fp16 import convert_to_fp16, topological_sort  # noqa: E402
from clippy_rt.export.onnx import export_towers  # noqa: E402
from clippy_rt.formats.model_dir import load_model  # noqa: E402

from tolerances import TOLERANCES  # noqa: E402

PROMPTS = ["a photo of a cat", "a dog on a long road by the sea", "tree"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, info = load_model(tiny_model_dir)
    return model, info, load_tokenizer(info.tokenizer, info.config)


def _text_embeds(graph, tokenizer):
    input_ids, attention_mask = tokenizer.encode(PROMPTS)
    out = ReferenceEvaluator(graph).run(None, {"input_ids": input_ids.numpy(),
                                               "attention_mask": attention_mask.numpy()})[0]
    return torch.from_numpy(out)


def test_image_graph_in_float16_matches_torch(tiny):
    model, _, _ = tiny
    graph = convert_to_fp16(export_towers(model, names=("image",))["image"], "image")
    onnx.checker.check_model(graph, full_check=True)
    pixels = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    patch, pooled = (torch.from_numpy(a) for a in ReferenceEvaluator(graph).run(None, {"pixel_values": pixels.numpy()}))
    with torch.no_grad():
        patch_ref, pooled_ref = model.visual(pixels)
    torch.testing.assert_close(patch, patch_ref, **TOLERANCES[torch.float16])
    torch.testing.assert_close(pooled, pooled_ref, **TOLERANCES[torch.float16])
    text = torch.nn.functional.normalize(torch.randn(21, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    agreement = ((patch @ text.T).argmax(-1) == (patch_ref @ text.T).argmax(-1)).float().mean()
    assert agreement >= 0.99


def test_text_policy_survives_a_large_residual_stream(tiny):
    model, _, tokenizer = tiny
    # Scale the feed-forward output so that the residual stream reaches ~1e3: its square,
    # taken by the RMS norm, is past float16's 65504.
    scaled = _scaled(model, 300.0)
    input_ids, attention_mask = tokenizer.encode(PROMPTS)
    residual = []
    hook = scaled.text.blocks[0].register_forward_hook(lambda module, args, out: residual.append(out))
    with torch.no_grad():
        reference = scaled.text(input_ids, attention_mask)
    hook.remove()
    assert residual[0].abs().max() ** 2 > 65504
    exported = export_towers(scaled, names=("text",))["text"]
    policy = _text_embeds(convert_to_fp16(exported, "text"), tokenizer)
    torch.testing.assert_close(policy, reference, **TOLERANCES[torch.float16])
    with np.errstate(all="ignore"):
        everything = _text_embeds(convert_to_fp16(exported, "text", float16_nodes=[r".*"]), tokenizer)
    assert not torch.isfinite(everything).all()


def _scaled(model, factor):
    import copy

    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for block in scaled.text.blocks:
            block.ffn.wo.weight.mul_(factor)
    return scaled


def test_text_policy_converts_only_the_projections(tiny):
    model, _, tokenizer = tiny
    exported = export_towers(model, names=("text",))["text"]
    converted = convert_to_fp16(exported, "text")
    onnx.checker.check_model(converted, full_check=True)
    weights = {init.name: init.data_type for init in converted.graph.initializer}
    half_nodes = [n for n in converted.graph.node
                  if n.op_type == "MatMul" and any(weights.get(i) == TensorProto.FLOAT16 for i in n.input)]
    assert sorted({n.name.split("/")[-2] for n in half_nodes}) == ["k", "o", "q", "v", "wi"]
    assert len(half_nodes) == 5 * model.cfg.text.depth
    assert weights[next(i for n in converted.graph.node if n.name.endswith("ffn/wo/MatMul") for i in n.input
                        if i in weights)] == TensorProto.FLOAT
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [TensorProto.FLOAT]
    input_ids, attention_mask = tokenizer.encode(PROMPTS)
    with torch.no_grad():
        reference = model.text(input_ids, attention_mask)
    torch.testing.assert_close(_text_embeds(converted, tokenizer), reference, **TOLERANCES[torch.float16])
    with pytest.raises(ValueError, match="allow-list"):
        convert_to_fp16(exported, "text", float16_nodes=[r"/nothing/.*"])


def test_topological_sort_restores_order(tiny):
    model, _, _ = tiny
    graph = export_towers(model, names=("image",))["image"]
    nodes = list(graph.graph.node)
    random.Random(0).shuffle(nodes)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(graph)
    topological_sort(graph.graph)
    onnx.checker.check_model(graph)
    pixels = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model.visual(torch.from_numpy(pixels))[1]
    torch.testing.assert_close(torch.from_numpy(ReferenceEvaluator(graph).run(None, {"pixel_values": pixels})[1]),
                               expected, **TOLERANCES[torch.float32])
