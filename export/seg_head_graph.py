"""``seg_head.onnx``: the segmentation head as an ONNX graph (image to labels without Python).

Inputs and outputs are ``io_spec.SEG_HEAD``. For image b, prompt k and output pixel (y, x):

    patch_logits[b, k, i, j] = < patch_features[b, i*w + j, :], text_embeds[k, :] >
    logits[b, k, y, x]       = bilinear(patch_logits[b, k])(y, x)     (half-pixel centres)
    labels[b, y, x]          = argmax_k logits[b, k, y, x]             (lowest k on ties)
    scores[b, y, x]          = max_k logits[b, k, y, x]

This is the fused order of ``clippy_rt.kernels.seg_head`` (upsample the K patch logits,
not the D feature channels; both are linear so the logits agree up to rounding). The
ONNX ``Resize`` in ``linear`` mode with ``half_pixel`` coordinates samples like
``F.interpolate(mode="bilinear", align_corners=False)``, edge clamping included.
The graph is written node by node with ``onnx.helper`` rather than traced, so the grid
and the output size are runtime inputs instead of constants frozen by a tracer.
"""

from __future__ import annotations

from pathlib import Path

from clippy_rt.formats.io_spec import SEG_HEAD


def build_seg_head(opset: int = 17):
    """The seg_head ModelProto for ``opset`` (>= 17), checked."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_value", TensorProto.INT64, [len(values)], values))

    nodes = [
        # [B, N, D] x [D, K] -> [B, N, K]
        helper.make_node("Transpose", ["text_embeds"], ["text_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["patch_features", "text_t"], ["patch_logits"]),
        # -> [B, K, N] -> [B, K, h, w]
        helper.make_node("Transpose", ["patch_logits"], ["logits_bkn"], perm=[0, 2, 1]),
        helper.make_node("Shape", ["logits_bkn"], ["bkn_shape"]),
        const("first_two", [0]), const("two", [2]),
        helper.make_node("Slice", ["bkn_shape", "first_two", "two"], ["bk_shape"]),
        helper.make_node("Concat", ["bk_shape", "grid_size"], ["grid_shape"], axis=0),
        helper.make_node("Reshape", ["logits_bkn", "grid_shape"], ["logits_grid"]),
        # Bilinear, half-pixel centres: F.interpolate(mode="bilinear", align_corners=False).
        helper.make_node("Concat", ["bk_shape", "output_size"], ["resize_sizes"], axis=0),
        helper.make_node("Resize", ["logits_grid", "", "", "resize_sizes"], ["logits"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0, select_last_index=0),
    ]
    if opset >= 18:
        nodes += [const("class_axis", [1]),
                  helper.make_node("ReduceMax", ["logits", "class_axis"], ["scores"], keepdims=0)]
    else:
        nodes.append(helper.make_node("ReduceMax", ["logits"], ["scores"], axes=[1], keepdims=0))

    def value(spec):
        return helper.make_tensor_value_info(spec.name, spec.onnx_type, list(spec.axes))

    graph = helper.make_graph(nodes, "clippy_rt_seg_head", [value(t) for t in SEG_HEAD.inputs],
                              [value(t) for t in SEG_HEAD.outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="clippy-rt")
    onnx.checker.check_model(model, full_check=True)
    return model


def export_seg_head(path: Path, opset: int = 17) -> Path:
    """Write ``seg_head.onnx`` to ``path``."""
    import onnx

    onnx.save_model(build_seg_head(opset), str(path))
    return Path(path)
