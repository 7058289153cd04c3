"""patch_pool: the reference against a direct formulation, the Triton kernels against the reference."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.kernels.patch_pool import patch_pool, patch_pool_ref

patch_pool_module = importlib.import_module("clippy_rt.kernels.patch_pool")


def make_tokens(batch, num_tokens, dim, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(batch, num_tokens, dim, generator=generator)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("include_cls", [True, False])
def test_ref_matches_definition(include_cls):
    tokens = make_tokens(2, 1 + 49, 32)
    tokens[0, 0, 5] = 100.0  # the class token holds the max of one channel
    patch, pooled = patch_pool_ref(tokens, include_cls=include_cls)
    expected_patch = tokens[:, 1:] / tokens[:, 1:].norm(dim=-1, keepdim=True)
    pool_over = tokens if include_cls else tokens[:, 1:]
    expected_pooled = pool_over.max(dim=1).values
    expected_pooled = expected_pooled / expected_pooled.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(patch, expected_patch)
    torch.testing.assert_close(pooled, expected_pooled)
    assert bool(pooled[0, 5] > 0.5) == include_cls


def test_ref_excludes_register_tokens():
    tokens = make_tokens(1, 4 + 9, 16)
    tokens[0, 2, 3] = 50.0  # a register token: never pooled
    patch, pooled = patch_pool_ref(tokens, include_cls=True, num_prefix_tokens=4)
    assert patch.shape == (1, 9, 16)
    expected = torch.maximum(tokens[0, 4:].max(dim=0).values, tokens[0, 0])
    torch.testing.assert_close(pooled[0], F.normalize(expected, dim=0))


def test_ref_zero_tokens_follow_normalize_eps():
    tokens = torch.zeros(1, 5, 8)
    patch, pooled = patch_pool_ref(tokens)
    assert torch.equal(patch, torch.zeros(1, 4, 8)) and torch.equal(pooled, torch.zeros(1, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ref_outputs_in_input_dtype(dtype, output_tol):
    tokens = make_tokens(2, 10, 24, dtype)
    patch, pooled = patch_pool_ref(tokens)
    assert patch.dtype == dtype and pooled.dtype == dtype
    expected_patch, expected_pooled = patch_pool_ref(tokens.float())
    torch.testing.assert_close(patch.float(), expected_patch, **output_tol[dtype])
    torch.testing.assert_close(pooled.float(), expected_pooled, **output_tol[dtype])


@pytest.mark.parametrize("call, error, message", [
    (lambda x: patch_pool(x[0]), InputError, r"\[B, T, D\]"),
    (lambda x: patch_pool(x.double()), TypeError, "float64"),
    (lambda x: patch_pool(x[:, :1]), InputError, "no patch token"),
    (lambda x: patch_pool(x, include_cls=True, num_prefix_tokens=0), InputError, "class token"),
    (lambda x: patch_pool(x, num_prefix_tokens=-1), InputError, "non-negative"),
    (lambda x: patch_pool(x, include_cls=1), TypeError, "bool"),
    (lambda x: patch_pool(x, impl="onnx"), InputError, "impl must be one of"),
])
def test_invalid_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(make_tokens(1, 5, 8))


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        patch_pool(make_tokens(1, 5, 8), impl="triton")


@pytest.mark.parametrize("batch, num_tokens, dim, dtype, include_cls, num_prefix", [
    (2, 1 + 196, 768, torch.float32, True, 1),
    (1, 1 + 49, 64, torch.float16, False, 1),
    (3, 5 + 20, 100, torch.bfloat16, True, 5),
    (2, 7, 33, torch.float32, False, 0),
    (1, 2, 1, torch.float32, True, 1),
])
def test_kernel_matches_reference(kernel_device, output_tol, batch, num_tokens, dim, dtype, include_cls,
                                  num_prefix):
    tokens = make_tokens(batch, num_tokens, dim, dtype, kernel_device)
    patch, pooled = patch_pool(tokens, include_cls=include_cls, num_prefix_tokens=num_prefix, impl="triton")
    expected_patch, expected_pooled = patch_pool_ref(tokens.cpu(), include_cls=include_cls,
                                                     num_prefix_tokens=num_prefix)
    assert patch.dtype == dtype and pooled.dtype == dtype and patch.device == tokens.device
    torch.testing.assert_close(patch.cpu(), expected_patch, **output_tol[dtype])
    torch.testing.assert_close(pooled.cpu(), expected_pooled, **output_tol[dtype])


# Token blocks of every size the config sets give at D = 768 (8 to 32 tokens) and smaller.
@pytest.mark.parametrize("block_t", [1, 4, 8, 16, 32])
def test_kernel_every_launch_config(kernel_device, output_tol, monkeypatch, block_t):
    """Every token-block size: 1 + 45 tokens (a partial last block), D = 200 (not a power
    of two); the class token holds one channel's max."""
    monkeypatch.setattr(patch_pool_module, "_pool_configs",
                        lambda *args: [dict(BLOCK_T=block_t, BLOCK_D=256, num_warps=4)])
    tokens = make_tokens(2, 46, 200, device=kernel_device)
    tokens[1, 0, 13] = 50.0
    patch = torch.empty((2, 45, 200), device=kernel_device)
    pooled = torch.empty((2, 200), device=kernel_device)
    patch_pool_module._launch_pool(patch, pooled, tokens, 1, True)
    expected_patch, expected_pooled = patch_pool_ref(tokens.cpu())
    torch.testing.assert_close(patch.cpu(), expected_patch, **output_tol[torch.float32])
    torch.testing.assert_close(pooled.cpu(), expected_pooled, **output_tol[torch.float32])


def test_kernel_non_contiguous_tokens_and_class_token_max(kernel_device):
    tokens = make_tokens(2, 30, 16).transpose(0, 1).contiguous().transpose(0, 1)  # batch-minor memory
    tokens[1, 0, 7] = 40.0
    tokens = tokens.to(kernel_device)
    for include_cls in (True, False):
        patch, pooled = patch_pool(tokens, include_cls=include_cls, impl="triton")
        expected = patch_pool_ref(tokens.cpu(), include_cls=include_cls)
        torch.testing.assert_close((patch.cpu(), pooled.cpu()), expected)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_sweep_gpu(dtype, output_tol):
    for batch, grid in [(1, 14), (8, 28), (32, 14), (4, 64)]:
        tokens = make_tokens(batch, 1 + grid * grid, 768, dtype, "cuda")
        for include_cls in (True, False):
            got = patch_pool(tokens, include_cls=include_cls, impl="triton")
            expected = patch_pool_ref(tokens, include_cls=include_cls)
            torch.testing.assert_close(got, expected, **output_tol[dtype])


def test_auto_takes_the_differentiable_path_when_autograd_records(monkeypatch):
    # Pretend the Triton kernel would be chosen (as on a GPU): with gradients needed the
    # dispatcher must still take the torch path, whose gradients are those of the formula.
    import clippy_rt.kernels.patch_pool as patch_pool_module
    from clippy_rt.models.vit import pool_tokens

    monkeypatch.setattr(patch_pool_module, "resolve_impl", lambda *args: "triton")
    tokens = make_tokens(2, 1 + 9, 16).requires_grad_()
    patch, pooled = pool_tokens(tokens, include_cls=True, pooling="max")
    (patch.sum() + (pooled * torch.arange(16.0)).sum()).backward()

    direct = tokens.detach().clone().requires_grad_()
    expected_patch = direct[:, 1:] / direct[:, 1:].norm(dim=-1, keepdim=True)
    expected_pooled = direct.max(dim=1).values
    expected_pooled = expected_pooled / expected_pooled.norm(dim=-1, keepdim=True)
    (expected_patch.sum() + (expected_pooled * torch.arange(16.0)).sum()).backward()
    torch.testing.assert_close(tokens.grad, direct.grad)
