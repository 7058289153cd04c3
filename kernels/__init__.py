"""Post-processing and pre-processing kernels: Triton kernels with pure-torch references.

Each public function takes ``backend="auto" | "triton" | "torch"``: "auto" runs the
Triton kernel on CUDA tensors when Triton imports and the torch reference elsewhere.
Importing this package imports neither Triton nor CUDA; ``clippy_rt.kernels.native``
loads the optional CUDA C++ library (built by CMake) on first use.
"""

from .patch_pool import patch_pool, patch_pool_ref
from .preprocess import preprocess, preprocess_ref
from .seg_head import seg_head, seg_head_ref

__all__ = ["seg_head", "seg_head_ref", "patch_pool", "patch_pool_ref", "preprocess", "preprocess_ref"]
