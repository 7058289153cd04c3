"""The image tower against timm's ViT-B/16 at one input size, side by side in one run.

Three variants on the same random clippy-b16 weights (a timm ViT made at 224 and
converted): ``timm`` (timm's VisionTransformer built at the input size, its position
embedding already at that grid), ``ours`` (clippy_rt's VisionTower: the position
embedding resized once and cached per grid), and ``ours-uncached`` (the cache emptied
before every call: the bicubic resize of the position embedding in every forward, as
the tower ran before the cache). ``forward_features`` only (no pooling), eager, after a
warm-up; CUDA timings synchronise. Prints a markdown table (median, p90, images/s).

    python benchmarks/bench_vit.py --size 448 --batch 1 --repeats 10
    python benchmarks/bench_vit.py --device cuda --precision fp16 --size 448 --batch 8
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=448, help="square input size, a multiple of 16")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def build(size: int, device: torch.device, dtype: torch.dtype):
    """(timm model at ``size``, our tower) sharing one set of random weights."""
    import timm
    from timm.layers import resample_abs_pos_embed

    from clippy_rt.config import clippy_b16
    from clippy_rt.convert import convert_timm_vit, infer_image_config
    from clippy_rt.models import VisionTower

    cfg = clippy_b16().image
    torch.manual_seed(0)
    kwargs = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=True, num_classes=0)
    trained = timm.models.vision_transformer.VisionTransformer(img_size=224, **kwargs).eval()
    state, _ = convert_timm_vit(trained.state_dict())
    ours = VisionTower(infer_image_config(state, cfg, heads=cfg.heads)).eval()
    ours.load_state_dict(state)
    reference = timm.models.vision_transformer.VisionTransformer(img_size=size, **kwargs).eval()
    timm_state = trained.state_dict()
    timm_state["pos_embed"] = resample_abs_pos_embed(timm_state["pos_embed"], new_size=(size // 16, size // 16),
                                                     num_prefix_tokens=1, interpolation="bicubic", antialias=False)
    reference.load_state_dict(timm_state)
    return reference.to(device, dtype), ours.to(device, dtype)


def time_calls(fn, repeats: int, warmup: int, device: torch.device):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.size % 16 or args.size < 16:
        print(f"error: --size must be a positive multiple of 16, got {args.size}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = PRECISIONS[args.precision]
    reference, ours = build(args.size, device, dtype)
    pixels = torch.randn(args.batch, 3, args.size, args.size, device=device, dtype=dtype)

    def uncached():
        ours._pos_cache.clear()
        return ours.forward_features(pixels)

    variants = {"timm": lambda: reference.forward_features(pixels), "ours": lambda: ours.forward_features(pixels),
                "ours-uncached": uncached}
    results = {}
    with torch.inference_mode():
        torch.testing.assert_close(ours.forward_features(pixels).float(), reference.forward_features(pixels).float(),
                                   atol=5e-2 if dtype != torch.float32 else 1e-3, rtol=0)
        for name, fn in variants.items():
            results[name] = time_calls(fn, args.repeats, args.warmup, device)
    print(f"ViT-B/16 forward_features, {args.size}x{args.size}, batch {args.batch}, {args.precision}, "
          f"{args.device}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print("")
    print("| variant | median ms | p90 ms | images/s | vs timm |")
    print("|---|---|---|---|---|")
    timm_median = statistics.median(results["timm"])
    for name, samples in results.items():
        ordered = sorted(samples)
        median = statistics.median(ordered)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(f"| {name} | {median:.2f} | {p90:.2f} | {args.batch * 1000.0 / median:.1f} | "
              f"{timm_median / median:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
