"""Float16 variants of the exported graphs, with the parts that lose accuracy kept in float32.

The conversion is ONNX Runtime's ``convert_float_to_float16`` (shipped inside the
onnxruntime package): initializers and activations become float16, Cast nodes are
inserted around the nodes kept in float32, and the graph inputs and outputs stay float32
(``keep_io_types``), so callers of a float16 graph see the same tensors as for float32.

What stays float32, and why (figures in benchmarks/RESULTS.md, "float16 accuracy"):

- the final L2 normalisations (``ReduceL2`` and the division after it): the sum of 768
  squares of O(1) activations rounds badly in float16, and every downstream similarity
  is divided by it;
- the T5 RMS norms (``Pow`` / ``ReduceMean`` / ``Sqrt``): ``mean(x**2)`` overflows float16
  for T5's large residual activations, which the torch model also computes in float32;
- the position-bias table of the text tower and the bicubic position-embedding resize are
  tiny and stay float32 by construction (index arithmetic, ``Resize`` scales).

LayerNormalization and Softmax run in float16: ONNX Runtime and TensorRT accumulate both
in float32 internally, and keeping them float32 measured no gain.
"""

from __future__ import annotations

from typing import Iterable, Optional

# Operator types kept in float32 in both towers.
KEEP_FLOAT32_OPS = ("ReduceL2", "Pow", "ReduceMean", "Sqrt")


def convert_to_fp16(model, keep_float32_ops: Optional[Iterable[str]] = None,
                    keep_float32_nodes: Iterable[str] = ()):
    """A float16 copy of ``model`` (float32 graph I/O kept) as an ONNX ModelProto.

    ``keep_float32_ops``: operator types left in float32 (default ``KEEP_FLOAT32_OPS``);
    ``keep_float32_nodes``: node names left in float32.
    """
    import copy

    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    ops = list(KEEP_FLOAT32_OPS if keep_float32_ops is None else keep_float32_ops)
    converted = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True,
                                         op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(ops)),
                                         node_block_list=list(keep_float32_nodes))
    # The converter appends its input casts after their consumers; ONNX requires
    # topological order.
    topological_sort(converted.graph)
    return converted


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
        needed = {name for name in _node_inputs(node) if name not in available and name in producer}
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


def _node_inputs(node):
    """Input names of ``node``, including those read by its subgraphs (If / Loop bodies)."""
    names = set(node.input)
    for attribute in node.attribute:
        for subgraph in list(attribute.g.node if attribute.HasField("g") else []):
            names |= set(subgraph.input)
    return names
