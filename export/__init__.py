"""Exporters: ONNX graphs of both towers (``onnx``), their float16 variants (``fp16``), the
segmentation head as a graph (``seg_head_graph``) and TensorRT engines (``tensorrt``), all
named and shaped by the one I/O spec (``clippy_rt.formats.io_spec``). What they write on disk
is read back by ``clippy_rt.formats``, so the runtimes never import this package.

Nothing here is imported by ``import clippy_rt``; onnx, onnxruntime and tensorrt are
imported only by the functions that need them.
"""
