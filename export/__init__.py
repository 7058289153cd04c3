"""Exporters: ONNX graphs of both towers (``onnx``), their float16 variants (``fp16``), the
segmentation head as a graph (``seg_head_graph``) and TensorRT engines (``tensorrt``), all
named and shaped by the one I/O spec (``io_spec``).

Nothing here is imported by ``import clippy_rt``; onnx, onnxruntime and tensorrt are
imported only by the functions that need them.
"""
