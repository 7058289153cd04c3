"""Post-processing and pre-processing kernels: Triton kernels with pure-torch references.

One module per kernel, and the public function inside it carries the module's name:
``kernels.seg_head.seg_head``, ``kernels.patch_pool.patch_pool``,
``kernels.preprocess.preprocess`` (the package does not re-export them, so no function
hides its module). Each takes ``backend="auto" | "triton" | "torch"``: "auto" runs the
Triton kernel on CUDA tensors when Triton imports and the torch reference elsewhere;
``seg_head`` also takes "native" (the CUDA C++ library, ``kernels.native``), which "auto"
uses on CUDA when Triton cannot run. Importing this package imports neither Triton nor
CUDA; ``kernels.native`` loads the optional CUDA C++ library on first use.
"""

from .patch_pool import patch_pool_ref
from .preprocess import preprocess_ref
from .seg_head import seg_head_ref

__all__ = ["seg_head_ref", "patch_pool_ref", "preprocess_ref"]
