"""Float16 variants of the exported graphs, with the parts that lose accuracy kept in float32.

``convert_nodes_to_fp16`` runs a chosen set of nodes in float16: their float tensors and
the weights only they read become float16, and a Cast is placed on every edge between the
two precisions, so a float32 region stays float32 end to end. Graph inputs and outputs
stay float32, so callers of a float16 graph see the same tensors as for float32.
(ONNX Runtime's own ``convert_float_to_float16`` was tried first: it types every tensor
float16 and casts around the nodes it keeps, so values between two float32 nodes still
pass through float16, which is exactly what must not happen to T5's residual stream.)

What runs in float16, per tower. Measured with ``onnx.reference.ReferenceEvaluator``,
which computes float16 ops in float16 (ONNX Runtime's CPU provider runs most float16
nodes in float32 behind inserted casts and cannot show float16 overflow):

- image tower: everything except the final L2 normalisations (``ReduceL2``) and the
  position-embedding ``Resize`` (which takes float32 scales). On the tiny model the
  all-float16 graph and this one agree with torch to 7e-4 (patch features) and 3e-4
  (embedding), 100 % of patch labels; keeping LayerNormalization and Softmax in float32
  as well did not improve it (8.9e-4 / 2.4e-4). The normalisation is kept in float32
  because it costs one reduction per output, not because it was measured necessary.
- text tower (T5): only the large matrix products, the attention projections q, k, v, o
  and the feed-forward input projection(s) wi. The residual stream, the RMS norms, the
  attention logits with their relative-position and padding bias, the feed-forward output
  projection wo, pooling and normalisation stay float32. T5's residual stream grows large
  (Hugging Face clamps it in float16), and the RMS norm squares it: with the feed-forward
  output weights scaled so that the residual reaches 1.4e3, the all-float16 graph returns
  non-finite embeddings while this one stays within 1.2e-4 of torch (2.7e-4 unscaled);
  tests/export/test_fp16.py checks both.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

FLOAT16_MAX = 65504.0
# Kept float32 in every tower: Resize takes float32 scales, and the position-embedding
# resize is a one-off on a small table.
ALWAYS_FLOAT32_OPS = frozenset({"Resize"})
# Ops that read only the shape of their input, so its precision does not matter.
TYPE_AGNOSTIC_OPS = frozenset({"Shape", "Size"})
# Operator types kept in float32 in the image tower.
IMAGE_KEEP_FLOAT32_OPS = ("ReduceL2",)
# The only text-tower nodes converted to float16 (names as the tracer writes them from
# the module tree of clippy_rt.models.t5).
TEXT_FLOAT16_NODES = (r"/text/blocks\.\d+/attn/(q|k|v|o)/MatMul", r"/text/blocks\.\d+/ffn/(wi|wi_0|wi_1)/MatMul")


def convert_to_fp16(model, graph_name: str, keep_float32_ops: Optional[Iterable[str]] = None,
                    float16_nodes: Optional[Sequence[str]] = None):
    """A float16 copy of ``model`` (tower ``graph_name``), float32 graph inputs and outputs.

    ``keep_float32_ops`` overrides the image tower's float32 operator types;
    ``float16_nodes`` (regular expressions over node names) overrides the text tower's
    float16 allow-list. Raises ``ValueError`` if the allow-list matches no node (the model's
    module names changed and the policy would silently convert nothing).
    """
    if graph_name == "image":
        keep = set(IMAGE_KEEP_FLOAT32_OPS if keep_float32_ops is None else keep_float32_ops) | ALWAYS_FLOAT32_OPS
        half = {n.name for n in model.graph.node if n.op_type not in keep}
    elif graph_name == "text":
        patterns = [re.compile(p) for p in (TEXT_FLOAT16_NODES if float16_nodes is None else float16_nodes)]
        half = {n.name for n in model.graph.node
                if n.op_type not in ALWAYS_FLOAT32_OPS and any(p.fullmatch(n.name) for p in patterns)}
        if not half:
            raise ValueError("no text-tower node matches the float16 allow-list; the node names changed")
    else:
        raise ValueError(f"unknown graph {graph_name!r}")
    return convert_nodes_to_fp16(model, half)


def convert_nodes_to_fp16(model, half_nodes: Set[str]):
    """Run the nodes named in ``half_nodes`` in float16 and every other node as it was.

    Every float32 tensor gets the precision of its producer (graph inputs stay float32; an
    initializer or constant read only by float16 nodes is stored as float16, clipped to
    +-65504); a Cast is inserted on each edge whose two ends differ, once per tensor and
    precision, so a float32 region never round-trips through float16. Float32 graph outputs
    produced in float16 are cast back under their own names.
    """
    import copy

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = copy.deepcopy(model)
    graph = model.graph
    inferred = shape_inference.infer_shapes(model)
    types: Dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    initializers = {init.name: init for init in graph.initializer}
    for name, init in initializers.items():
        types[name] = init.data_type
    is_float = {name for name, t in types.items() if t == TensorProto.FLOAT}

    consumers: Dict[str, List] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def to_half_array(array):
        return np.clip(array, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)

    # Precision of every float tensor: its producer's; initializers read only in float16 become float16.
    precision: Dict[str, int] = {}
    for name in is_float:
        precision[name] = TensorProto.FLOAT
    for name, init in initializers.items():
        readers = consumers.get(name, [])
        if init.data_type == TensorProto.FLOAT and readers and all(n.name in half_nodes for n in readers):
            init.CopyFrom(numpy_helper.from_array(to_half_array(numpy_helper.to_array(init)), name))
            precision[name] = TensorProto.FLOAT16
    for node in graph.node:
        if node.name not in half_nodes:
            continue
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            elif attribute.type == attribute.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(to_half_array(numpy_helper.to_array(attribute.t)),
                                                             attribute.t.name))
        for name in node.output:
            if name in is_float:
                precision[name] = TensorProto.FLOAT16

    casts: Dict[Tuple[str, int], str] = {}
    new_nodes = []

    def cast_of(name: str, target: int) -> str:
        key = (name, target)
        if key not in casts:
            suffix = "fp16" if target == TensorProto.FLOAT16 else "fp32"
            casts[key] = f"{name}__{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=target,
                                              name=f"{name}__cast_{suffix}"))
        return casts[key]

    for node in graph.node:
        if node.op_type in TYPE_AGNOSTIC_OPS:
            continue
        target = TensorProto.FLOAT16 if node.name in half_nodes else TensorProto.FLOAT
        for index, name in enumerate(node.input):
            if name in precision and precision[name] != target:
                node.input[index] = cast_of(name, target)

    for output in graph.output:
        if output.type.tensor_type.elem_type == TensorProto.FLOAT and precision.get(output.name) == TensorProto.FLOAT16:
            inner = f"{output.name}__fp16"
            for node in graph.node:
                for index, name in enumerate(node.output):
                    if name == output.name:
                        node.output[index] = inner
                for index, name in enumerate(node.input):
                    if name == output.name:
                        node.input[index] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT,
                                              name=f"{output.name}__cast_fp32"))
    graph.node.extend(new_nodes)
    # Intermediate types changed; shape inference recomputes them.
    del graph.value_info[:]
    topological_sort(graph)
    return model


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` in place so that every node follows its producers.

    Kahn's algorithm, stable: among ready nodes the original order is kept.
    """
    import heapq

    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    producer = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            producer[name] = index
    waiting = []
    consumers = {}
    for index, node in enumerate(nodes):
        needed = {name for name in node.input if name not in available and name in producer}
        waiting.append(len(needed))
        for name in needed:
            consumers.setdefault(producer[name], []).append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers.get(index, []):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle or an input that no node produces")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
