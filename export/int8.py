"""Int8 variants of the exported towers, for ONNX Runtime's CPU provider.

``quantize_int8`` rewrites every ``MatMul`` whose weight (input B) is an initializer of
the float32 graph with ONNX Runtime's dynamic quantisation:

- weights: int8, symmetric, one scale per output channel (the last axis of a MatMul
  weight), computed once at export;
- activations: uint8, one scale and zero point per tensor, computed at run time from the
  actual values of each call (``DynamicQuantizeLinear``), so no calibration set is needed;
- the integer product is accumulated in int32 and scaled back to float32.

The exporter traces every linear layer as ``MatMul`` + ``Add`` (its inputs are 3-D), so
the graphs hold no ``Gemm``; ONNX Runtime's dynamic quantiser has no ``Gemm`` rule and
would leave one float32. Products of two activations (attention scores and their weighted sum), the norms,
softmax, GELU, the position-embedding resize and the final normalisations stay float32.
ONNX Runtime fuses each quantised product into ``DynamicQuantizeMatMul``, which runs on
its AVX-512 VNNI / AVX2 integer kernels. The graphs' inputs and outputs are the float32
tensors of the I/O spec, as for every precision.

Full int8 range (no ``reduce_range``): exact on CPUs with AVX-512 VNNI or AVX-VNNI, where
the u8 x s8 products are summed in int32. On AVX2 without VNNI, ONNX Runtime's kernel adds
pairs of products in int16, which can saturate for large weights and activations; the
agreement figures in benchmarks/RESULTS.md were measured on a VNNI CPU.

Why dynamic and not static (calibrated) quantisation: the activation ranges of a ViT vary
strongly between images and between layers (the max-pooled embedding reads outliers), and a
per-call range follows them without a calibration set that would have to match the
deployment images. Measured side by side (``quantize_int8_static``, QDQ with min / max ranges
from 32 generated scenes; ``benchmarks/bench_cpu.py --part static``, figures in
benchmarks/RESULTS.md): static was no faster on the ``clippy-b16`` image tower (0.23x vs
0.26x torch fp32 by medians, 0.26x vs 0.24x by paired ratios) and agreed less with torch
fp32 on the demo model (99.27 % vs 99.85 % of the labels), so the exporter writes dynamic.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

from clippy_rt.errors import ModelDirError

QUANTIZED_OP_TYPES = ("MatMul",)
# What the dynamic quantiser writes for one quantised MatMul (DynamicQuantizeLinear on the
# activation, MatMulInteger, then Cast and Mul by the scales); the session fuses it.
INTEGER_OP_TYPES = ("MatMulInteger",)


def weight_products(model) -> List[str]:
    """Names of the float ``MatMul`` nodes in ``model`` whose B input is an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OP_TYPES and len(node.input) > 1 and node.input[1] in initializers]


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # The quantiser logs a hint about its own pre-processing tool on the root logger at
    # WARNING level for every call; the graphs here are already shape-inferred and checked.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, target: Path) -> Dict[str, object]:
    """Write the int8 version of the float32 graph ``source`` to ``target``.

    Returns the record kept in the manifest: how many products were quantised. Raises
    ``ModelDirError`` when the graph has no weight product to quantise (the result would
    silently be the float32 graph under another name) or when the quantiser left one of
    them float32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source), load_external_data=False)
    products = weight_products(model)
    if not products:
        raise ModelDirError(f"{source}: no MatMul with a constant weight to quantise")
    with _quiet_quantizer():
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                         nodes_to_quantize=products, per_channel=True, reduce_range=False,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    quantized = onnx.load(str(target), load_external_data=False)
    left = weight_products(quantized)
    integer_nodes = sum(1 for node in quantized.graph.node if node.op_type in INTEGER_OP_TYPES)
    if left or integer_nodes != len(products):
        raise ModelDirError(f"{source}: the quantiser converted {integer_nodes} of {len(products)} weight "
                            f"products" + (f" (left float32: {left[0]}, ...)" if left else ""))
    return {"quantized_matmuls": integer_nodes}


def quantize_int8_static(source: Path, target: Path, feeds: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """The static (calibrated) alternative to ``quantize_int8``, written to ``target``: the same
    weight products as QDQ pairs, weights int8 per output channel, activations uint8 with one
    scale and zero point per tensor fixed from their min / max over ``feeds`` (input name ->
    array, one dict per calibration sample). ONNX Runtime fuses each pair into an integer
    product. Measured against the dynamic scheme by ``benchmarks/bench_cpu.py --part static``;
    not written by the exporter (module doc). Returns the count of quantised products."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    model = onnx.load(str(source), load_external_data=False)
    products = weight_products(model)
    if not products:
        raise ModelDirError(f"{source}: no MatMul with a constant weight to quantise")
    with _quiet_quantizer():
        quantize_static(str(source), str(target), _Feeds(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_quantize=products, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
    quantized = onnx.load(str(target), load_external_data=False)
    left = weight_products(quantized)
    if left:
        raise ModelDirError(f"{source}: the static quantiser left {len(left)} weight products float32 ({left[0]}, ...)")
    return {"quantized_matmuls": len(products)}


def quantization_manifest(graph_records: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """The manifest's ``quantization`` entry for the int8 graphs (``graph_records``: per
    graph name, what ``quantize_int8`` returned)."""
    import onnxruntime

    return {
        "precision": "int8",
        "method": "onnxruntime dynamic quantization",
        "op_types": list(QUANTIZED_OP_TYPES),
        "weights": {"dtype": "int8", "symmetric": True, "granularity": "per output channel"},
        "activations": {"dtype": "uint8", "granularity": "per tensor, computed at run time"},
        "graphs": graph_records,
        "onnxruntime": onnxruntime.__version__,
    }


def write_int8_graphs(directory: Path, check_graph: Callable[[object, object, str], object]
                      ) -> Tuple[Dict[str, Dict[str, object]], Dict[str, object]]:
    """Quantise ``image.onnx`` and ``text.onnx`` of ``directory`` into ``*.int8.onnx`` beside
    them and check each result against the I/O spec with ``check_graph(model, graph, where)``
    (the exporter's own check, passed in so this module does not import the exporter). Returns (the manifest's ``files`` entries
    for the new graphs, without sizes and checksums; the manifest's ``quantization`` entry)."""
    import onnx

    from clippy_rt.formats.io_spec import TOWERS

    files: Dict[str, Dict[str, object]] = {}
    records: Dict[str, Dict[str, object]] = {}
    for graph in TOWERS:
        target = directory / graph.filename("int8")
        records[graph.name] = quantize_int8(directory / graph.filename("fp32"), target)
        check_graph(onnx.load(str(target)), graph, f"{graph.name} int8 graph")
        files[target.name] = {"graph": graph.name, "precision": "int8"}
    return files, quantization_manifest(records)
