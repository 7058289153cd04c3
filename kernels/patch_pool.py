"""Patch features and the pooled image embedding from the tower's output tokens, in one pass.

For tokens x [B, T, D] (T = num_prefix_tokens + N; the class token is token 0):

    patch_features[b, n] = x[b, P + n] / max(||x[b, P + n]||, 1e-12)              [B, N, D]
    pooled[b]            = m[b] / max(||m[b]||, 1e-12),  m[b, d] = max_t x[b, t, d]   [B, D]

with P = num_prefix_tokens and the max over the patch tokens plus, when
``include_cls``, the class token (docs/MODEL.md: the published checkpoint was trained with
it). Other prefix tokens (registers) never take part. Normalisation is F.normalize's;
arithmetic is float32 and both outputs come back in the input dtype.

Triton design: the first kernel gives each program a block of BLOCK_T tokens of one
image with the whole width D (one contiguous, vectorised read of BLOCK_T * D values);
it writes the normalised patch tokens and the block's max over its pooled tokens to a
small float32 [B, n_blocks, D] buffer, so the tokens are read once and the patches
written once: that is the bound (2 x B x T x D elements). The second kernel (one program
per image) reduces those partial maxima and normalises. BLOCK_T and the warps come from a
small config set, timed once per shape class on a GPU (_triton_support.launch_tuned).
"""

from __future__ import annotations

import numbers
from typing import Tuple

import torch
import torch.nn.functional as F

from clippy_rt.errors import InputError

from ._triton_support import device_guard, jit, launch_tuned, next_power_of_2, resolve_impl

tl = None  # bound to triton.language when a kernel is first launched (see _triton_support.jit)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------

def _normalise_and_block_max_kernel(
    patch_ptr, stride_pb, stride_pn, stride_pd,
    block_max_ptr, stride_mb, stride_mt, stride_md,
    tokens_ptr, stride_tb, stride_tt, stride_td,
    num_tokens, num_prefix, D, eps,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, INCLUDE_CLS: tl.constexpr,
):
    """patch[b, t - P] = normalise(tokens[b, t]) for t >= P; block_max[b, pid] = max over
    the block's pooled tokens (-inf when it has none).

    patch [B, N, D] (input dtype); block_max [B, cdiv(T, BLOCK_T), D] float32;
    tokens [B, T, D]. Grid: (cdiv(T, BLOCK_T), B).
    """
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask_t = offs_t < num_tokens
    mask_d = offs_d < D
    mask = mask_t[:, None] & mask_d[None, :]
    x = tl.load(tokens_ptr + b * stride_tb + offs_t.to(tl.int64)[:, None] * stride_tt + offs_d[None, :] * stride_td,
                mask=mask, other=0.0).to(tl.float32)

    is_patch = offs_t >= num_prefix
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    normalised = x / tl.maximum(norm, eps)[:, None]
    out = patch_ptr + b * stride_pb + (offs_t - num_prefix).to(tl.int64)[:, None] * stride_pn \
        + offs_d[None, :] * stride_pd
    tl.store(out, normalised.to(patch_ptr.dtype.element_ty), mask=mask & is_patch[:, None])

    pooled = is_patch
    if INCLUDE_CLS:
        pooled = pooled | (offs_t == 0)
    candidates = tl.where(mask & pooled[:, None], x, float("-inf"))
    tl.store(block_max_ptr + b * stride_mb + pid_t * stride_mt + offs_d * stride_md,
             tl.max(candidates, axis=0), mask=mask_d)


def _pool_finish_kernel(
    pooled_ptr, stride_ob, stride_od,
    block_max_ptr, stride_mb, stride_mt, stride_md,
    num_blocks, D, eps,
    BLOCK_D: tl.constexpr,
):
    """pooled[b] = normalise(max_t block_max[b, t]). pooled [B, D]; block_max [B, n, D]
    float32. Grid: (B,)."""
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    running = tl.full((BLOCK_D,), float("-inf"), tl.float32)
    for t in range(0, num_blocks):
        block = tl.load(block_max_ptr + b * stride_mb + t * stride_mt + offs_d * stride_md,
                        mask=mask_d, other=float("-inf"))
        running = tl.maximum(running, block)
    running = tl.where(mask_d, running, 0.0)
    norm = tl.sqrt(tl.sum(running * running, axis=0))
    tl.store(pooled_ptr + b * stride_ob + offs_d * stride_od,
             (running / tl.maximum(norm, eps)).to(pooled_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------------------------
# Validation and reference
# ----------------------------------------------------------------------------------------------

def _check_inputs(tokens, include_cls, num_prefix_tokens) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor [B, T, D], got {type(tokens).__name__}")
    if tokens.ndim != 3:
        raise InputError(f"tokens must be [B, T, D] (3 dims), got shape {tuple(tokens.shape)}")
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tokens must be float16, bfloat16 or float32, got {tokens.dtype}")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, numbers.Integral) \
            or num_prefix_tokens < 0:
        raise InputError(f"num_prefix_tokens must be a non-negative integer, got {num_prefix_tokens!r}")
    if not isinstance(include_cls, bool):
        raise TypeError(f"include_cls must be a bool, got {type(include_cls).__name__}")
    if include_cls and num_prefix_tokens < 1:
        raise InputError("include_cls=True needs a class token (num_prefix_tokens >= 1), "
                         f"got num_prefix_tokens={num_prefix_tokens}")
    if tokens.shape[1] <= num_prefix_tokens:
        raise InputError(f"tokens hold {tokens.shape[1]} tokens, no patch token after the "
                         f"{num_prefix_tokens} prefix token(s)")
    if tokens.shape[2] < 1:
        raise InputError(f"tokens need a width D >= 1, got shape {tuple(tokens.shape)}")


def patch_pool_ref(tokens: torch.Tensor, *, include_cls: bool = True, num_prefix_tokens: int = 1,
                   impl: str = "torch") -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch :func:`patch_pool` (``impl`` is ignored); traceable for ONNX export."""
    _check_inputs(tokens, include_cls, num_prefix_tokens)
    x = tokens.float()
    patches = x[:, num_prefix_tokens:]
    pooled = patches.amax(dim=1)
    if include_cls:
        pooled = torch.maximum(pooled, x[:, 0])
    return (F.normalize(patches, dim=-1, eps=NORM_EPS).to(tokens.dtype),
            F.normalize(pooled, dim=-1, eps=NORM_EPS).to(tokens.dtype))


# ----------------------------------------------------------------------------------------------
# Public launcher
# ----------------------------------------------------------------------------------------------

def patch_pool(tokens: torch.Tensor, *, include_cls: bool = True, num_prefix_tokens: int = 1,
               impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """(patch_features [B, N, D], pooled [B, D]) from tokens [B, num_prefix_tokens + N, D].

    Both outputs are L2-normalised (F.normalize, eps 1e-12) and in the tokens' dtype;
    see the module docstring for the math. ``impl``: "auto" (Triton for CUDA tensors
    when it imports, torch otherwise), "triton" (CPU only under TRITON_INTERPRET=1), "torch".
    The Triton kernels have no backward pass, so "auto" takes the (differentiable) torch
    path whenever autograd records ``tokens``: the model trains through this function.
    """
    if not isinstance(tokens, torch.Tensor):
        chosen = "torch"
    elif impl == "auto" and tokens.requires_grad and torch.is_grad_enabled():
        chosen = "torch"
    else:
        chosen = resolve_impl(impl, (tokens,), "patch_pool")
    if chosen == "torch":
        return patch_pool_ref(tokens, include_cls=include_cls, num_prefix_tokens=num_prefix_tokens)
    _check_inputs(tokens, include_cls, num_prefix_tokens)
    batch, num_tokens, dim = tokens.shape
    num_prefix = int(num_prefix_tokens)
    patch = torch.empty((batch, num_tokens - num_prefix, dim), dtype=tokens.dtype, device=tokens.device)
    pooled = torch.empty((batch, dim), dtype=tokens.dtype, device=tokens.device)
    if batch == 0:
        return patch, pooled

    if batch > 65535:
        raise InputError(f"the Triton patch_pool takes at most 65535 images per call (a CUDA grid limit), "
                         f"got {batch}")
    _launch_pool(patch, pooled, tokens, num_prefix, bool(include_cls))
    return patch, pooled


def _pool_configs(num_tokens: int, dim: int):
    """Launch configs (first: the default): BLOCK_T tokens of the whole width per program,
    4k to 32k float32 values per program."""
    block_d = next_power_of_2(dim)
    configs = []
    for values, warps in [(8192, 4), (16384, 8), (4096, 4), (32768, 8)]:
        config = dict(BLOCK_T=max(1, min(next_power_of_2(num_tokens), values // block_d)), BLOCK_D=block_d,
                      num_warps=warps)
        if config not in configs:
            configs.append(config)
    return configs


def _launch_pool(patch, pooled, tokens, num_prefix, include_cls, config_index=None) -> None:
    """Launch both kernels with a tuned config (``config_index`` forces one; tests)."""
    batch, num_tokens, dim = tokens.shape

    def launch(config):
        num_blocks = -(-num_tokens // config["BLOCK_T"])
        block_max = torch.empty((batch, num_blocks, dim), dtype=torch.float32, device=tokens.device)
        jit(_normalise_and_block_max_kernel)[(num_blocks, batch)](
            patch, *patch.stride(),
            block_max, *block_max.stride(),
            tokens, *tokens.stride(),
            num_tokens, num_prefix, dim, NORM_EPS,
            INCLUDE_CLS=include_cls, **config,
        )
        jit(_pool_finish_kernel)[(batch,)](
            pooled, *pooled.stride(),
            block_max, *block_max.stride(),
            num_blocks, dim, NORM_EPS,
            BLOCK_D=config["BLOCK_D"], num_warps=4,
        )

    configs = _pool_configs(num_tokens, dim)
    key = ("patch_pool", tokens.dtype, next_power_of_2(dim), num_tokens > 1024, batch >= 8)
    with device_guard(tokens):
        launch_tuned(key, configs, launch, not tokens.is_cuda, config_index, work=tokens.numel())
