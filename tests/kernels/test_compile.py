"""The Triton kernels compile for NVIDIA targets (Hopper, Ampere, Jetson Orin) without a GPU.

The interpreter cases check the kernels' arithmetic; this checks that the compiled path
(type rules of constexpr branches, tl.dot shapes and dtypes, pointer casts) lowers to
PTX and through ptxas. It runs in a child process because Triton's mode is fixed at
import time and this process uses the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMPILE_SCRIPT = r'''
import importlib
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

seg_head = importlib.import_module("clippy_rt.kernels.seg_head")
patch_pool = importlib.import_module("clippy_rt.kernels.patch_pool")
preprocess = importlib.import_module("clippy_rt.kernels.preprocess")
import triton.language as tl
for module in (seg_head, patch_pool, preprocess):
    module.tl = tl

I, F, C = "i32", "fp32", "constexpr"


def strides(*names, unit):
    return {name: (C if name == unit else I) for name in names}


def patch_logits(dtype, cast):
    sig = {"logits_ptr": "*fp32", **strides("stride_lb", "stride_lp", "stride_lk", unit="stride_lk"),
           "patch_ptr": dtype, **strides("stride_pb", "stride_ph", "stride_pw", "stride_pd", unit="stride_pd"),
           "text_ptr": dtype, **strides("stride_tk", "stride_td", unit="stride_td"),
           "B": I, "h": I, "w": I, "D": I, "K": I,
           "BLOCK_M": C, "BLOCK_N": C, "BLOCK_D": C, "CAST_F32": C}
    constants = {"stride_lk": 1, "stride_pd": 1, "stride_td": 1, "BLOCK_M": 64, "BLOCK_N": 32,
                 "BLOCK_D": 32 if cast else 64, "CAST_F32": cast}
    return seg_head._patch_logits_kernel, sig, constants


def bands(labels, scores, softmax, band_y, tile_x, block_k):
    sig = {"labels_ptr": labels, **strides("stride_ob", "stride_oy", "stride_ox", unit="stride_ox"),
           "scores_ptr": "*fp32", **strides("stride_sb", "stride_sy", "stride_sx", unit="stride_sx"),
           "logits_ptr": "*fp32", **strides("stride_lb", "stride_lp", "stride_lk", unit="stride_lk"),
           "band_start_ptr": "*i32", "band_rows_ptr": "*i32",
           "row_index_ptr": "*i32", "row_weight_ptr": "*fp32", "col_index_ptr": "*i32", "col_weight_ptr": "*fp32",
           "h": I, "w": I, "K": I, "W": I, "temperature": F,
           "BAND_Y": C, "TILE_X": C, "BLOCK_K": C, "WRITE_SCORES": C, "SOFTMAX": C}
    constants = {"stride_ox": 1, "stride_sx": 1, "stride_lk": 1, "BAND_Y": band_y, "TILE_X": tile_x,
                 "BLOCK_K": block_k, "WRITE_SCORES": scores, "SOFTMAX": softmax}
    return seg_head._band_argmax_kernel, sig, constants


def pool(dtype):
    sig = {"patch_ptr": dtype, **strides("stride_pb", "stride_pn", "stride_pd", unit="stride_pd"),
           "block_max_ptr": "*fp32", **strides("stride_mb", "stride_mt", "stride_md", unit="stride_md"),
           "tokens_ptr": dtype, **strides("stride_tb", "stride_tt", "stride_td", unit="stride_td"),
           "num_tokens": I, "num_prefix": I, "D": I, "eps": F, "BLOCK_T": C, "BLOCK_D": C, "INCLUDE_CLS": C}
    constants = {"stride_pd": 1, "stride_md": 1, "stride_td": 1, "BLOCK_T": 8, "BLOCK_D": 1024,
                 "INCLUDE_CLS": True}
    return patch_pool._normalise_and_block_max_kernel, sig, constants


def pool_finish(dtype):
    sig = {"pooled_ptr": dtype, **strides("stride_ob", "stride_od", unit="stride_od"),
           "block_max_ptr": "*fp32", **strides("stride_mb", "stride_mt", "stride_md", unit="stride_md"),
           "num_blocks": I, "D": I, "eps": F, "BLOCK_D": C}
    return patch_pool._pool_finish_kernel, sig, {"stride_od": 1, "stride_md": 1, "BLOCK_D": 1024}


def resize(dtype, bgr):
    sig = {"out_ptr": dtype, **strides("stride_ob", "stride_oc", "stride_oy", "stride_ox", unit="stride_ox"),
           "frames_ptr": "*u8", **strides("stride_fb", "stride_fy", "stride_fx", "stride_fc", unit="stride_fc"),
           "index_y_ptr": "*i32", "weight_y_ptr": "*fp32", "index_x_ptr": "*i32", "weight_x_ptr": "*fp32",
           "H": I, "W": I, "taps_y": I, "taps_x": I,
           "scale_0": F, "scale_1": F, "scale_2": F, "bias_0": F, "bias_1": F, "bias_2": F,
           "TILE_Y": C, "TILE_X": C, "BGR": C}
    return preprocess._resize_normalise_kernel, sig, {"stride_ox": 1, "stride_fc": 1, "TILE_Y": 8, "TILE_X": 64,
                                                      "BGR": bgr}


CASES = [
    (90, patch_logits("*fp16", False)), (80, patch_logits("*bf16", False)), (87, patch_logits("*fp32", True)),
    (90, bands("*u8", True, True, 16, 64, 8)), (87, bands("*i32", False, False, 1, 256, 1)),
    (90, bands("*u8", False, False, 16, 128, 1)), (80, bands("*u8", True, False, 8, 32, 16)),
    (90, pool("*fp16")), (90, pool_finish("*fp16")), (87, resize("*fp16", True)),
]
for capability, (fn, signature, constants) in CASES:
    source = ASTSource(fn=JITFunction(fn), signature=signature, constexprs=constants)
    triton.compile(source, target=GPUTarget("cuda", capability, 32))
    print(f"compiled {fn.__name__} for sm_{capability}")
'''


def test_kernels_compile_for_nvidia_targets():
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled ") == 10
