"""How each stage of the benchmark matrix is timed; each builder returns (fn(marks), setup or None).

Stages and their variants (the first variant of each stage is its baseline variant):

- ``preprocess``: B uint8 frames of ``frame_size`` -> normalised float32 [B, 3, S, S].
  ``pil``: the engine's host path (PIL bicubic resize, normalise, on the CPU);
  ``kernel``: ``clippy_rt.kernels.preprocess.preprocess`` on the device (Triton on CUDA,
  its torch reference on the CPU; on CUDA the uint8 upload is the ``h2d`` phase).
  Independent of backend and precision (both reported as "-").
- ``image``: the image tower on a float32 batch [B, 3, S, S] held in host memory.
  ``forward``: ``Engine.image_tower``; on CUDA with the torch backend the phases are
  ``h2d`` (upload), ``compute`` (the tower) and ``d2h`` (patch features and embedding
  back to the host); ``cuda-graph`` (with ``--cuda-graph``; torch on CUDA only): the same
  with the tower captured once in a CUDA graph and replayed.
- ``text``: ``Engine.encode_text`` on K prompts (tokenisation included). ``cold``: the
  text cache is cleared (untimed) before every iteration; ``cached``: every prompt hits
  the cache. Throughput in prompts/s; batch and size do not apply.
- ``seg-head``: random normalised patch features [B, S/p, S/p, D] and text embeddings
  [K, D] in the precision's dtype -> labels (and scores) at S x S. ``reference``: the
  reference procedure (upsample all D channels, then the dot product, then argmax);
  ``torch``: the fused head in torch; ``triton``: the Triton kernels (CUDA only);
  ``native``: the native CUDA kernel (CUDA only). Backend "-".
- ``end-to-end``: ``Engine.segment`` on B uint8 frames of ``frame_size`` with K prompts
  whose embeddings are cached (a stream with a fixed vocabulary); labels come back at
  the frame size. ``segment``: the engine's own path; ``reference-post``: the same stages
  with the reference procedure as post-processing (the baseline combination only).
  Phases: ``preprocess``, ``text``, ``image``, ``postprocess`` (host times).
- ``gemm``: the GEMM probe of the backend's runtime at the precision (``clippy_rt.bench.gemm``):
  one product of the image tower's largest shape at batch B and size S (tokens x width @
  width x MLP width, constant weight), CPU only. Its GFLOP/s is the GEMM limit the image
  tower rows of the same precision, batch and size are compared with (the fastest probe of
  that precision in the run). Throughput in products/s; prompts do not apply.
- ``stream``: ``Engine.stream`` (batch B, K prompts) called with B uint8 frames of
  ``frame_size`` per iteration, labels and scores back on the host; on CUDA with the
  torch backend, CUDA graphs captured during the warm-up.

Baseline: per stage, the baseline variant on the baseline backend and precision (default
torch, fp32), same device, batch, size and prompt count. The baseline combination is
always measured. A configuration that cannot run here (no CUDA, no TensorRT, a missing
exporter, not enough memory, an engine profile too small) is *skipped* with its reason;
one that raises anything else is *failed* with the error; the rest goes on either way.
"""


from __future__ import annotations

import importlib
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from clippy_rt.backends import backend_record
from clippy_rt.precisions import COMPUTE_DTYPES

from .plan import bench_prompts
from .settings import BenchSettings, Case, Unavailable
from .timer import is_cuda

# Fraction of the free memory the reference procedure may plan to use before it is skipped.
_MEMORY_FRACTION = 0.5



Timed = Tuple[Callable, Optional[Callable[[], None]]]


def random_frames(batch: int, frame_size: Tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, frame_size[0], frame_size[1], 3), dtype=np.uint8)


def require_cuda(device: str, what: str) -> None:
    if not is_cuda(device):
        raise Unavailable(f"{what} needs a CUDA device")


def preprocess_case(case: Case, config, settings: BenchSettings) -> Timed:
    from clippy_rt.images import prepare_batch

    frames = random_frames(case.batch, settings.frame_size, settings.seed)
    cfg = config.image
    if case.variant == "pil":
        images = list(frames)

        def run_pil(marks):
            prepare_batch(images, case.size, mode="squash", mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size)

        return run_pil, None
    try:
        from clippy_rt.kernels.preprocess import preprocess
    except ImportError as exc:
        raise Unavailable(f"the preprocess kernel is not available: {exc}") from None
    device = torch.device(case.device)
    host = torch.from_numpy(frames)
    if device.type == "cuda":
        host = host.pin_memory()

        def run_kernel(marks):
            on_device = host.to(device, non_blocking=True)
            marks("h2d")
            preprocess(on_device, (case.size, case.size), cfg.mean, cfg.std)
            marks("compute")

        return run_kernel, None

    def run_kernel_cpu(marks):
        preprocess(host, (case.size, case.size), cfg.mean, cfg.std)

    return run_kernel_cpu, None


def image_case(case: Case, engine, settings: BenchSettings) -> Timed:
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = torch.randn(case.batch, 3, case.size, case.size, generator=generator)
    device = torch.device(case.device)
    record = backend_record(case.backend)
    # Torch towers read device tensors: the upload is timed apart. Exported runtimes take
    # host tensors and do their own transfers.
    split_transfers = device.type == "cuda" and record.runs_in_torch
    if case.variant == "cuda-graph":
        require_cuda(case.device, "CUDA graph capture")
        if not record.cuda_graphs:
            raise Unavailable(f"CUDA graphs are not captured for the {case.backend} backend")
        return cuda_graph_case(engine, pixels.pin_memory(), device)
    if not split_transfers:
        # ONNX Runtime and TensorRT take host tensors and do their own transfers.
        def run_forward(marks):
            engine.image_tower(pixels)

        return run_forward, None
    host = pixels.pin_memory()

    def run_split(marks):
        on_device = host.to(device, non_blocking=True)
        marks("h2d")
        patch, pooled = engine.image_tower(on_device)
        marks("compute")
        patch.to("cpu")
        pooled.to("cpu")
        marks("d2h")

    return run_split, None


def cuda_graph_case(engine, host: torch.Tensor, device: torch.device) -> Timed:
    static_input = host.to(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    # Capture needs the allocator and any lazy initialisation warmed up on a side stream.
    with torch.cuda.stream(stream):
        for _ in range(3):
            engine.image_tower(static_input)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_patch, static_pooled = engine.image_tower(static_input)

    def run_graph(marks):
        static_input.copy_(host, non_blocking=True)
        marks("h2d")
        graph.replay()
        marks("compute")
        static_patch.to("cpu")
        static_pooled.to("cpu")
        marks("d2h")

    return run_graph, None


def text_case(case: Case, engine) -> Timed:
    prompts = bench_prompts(case.prompts)

    def run_text(marks):
        engine.encode_text(prompts)

    if case.variant == "cold":
        return run_text, engine.clear_text_cache
    engine.encode_text(prompts)
    return run_text, None


def check_memory(device: str, needed: int, what: str) -> None:
    if is_cuda(device):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        free = available_host_memory()
        if free is None:
            return
    if needed > _MEMORY_FRACTION * free:
        raise Unavailable(f"{what} needs about {needed / 2**30:.1f} GiB, more than half of the "
                          f"{free / 2**30:.1f} GiB free on {device}")


def available_host_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def seg_head_case(case: Case, config, settings: BenchSettings) -> Timed:
    import clippy_rt.kernels.seg_head as seg_head_module
    device = torch.device(case.device)
    dtype = COMPUTE_DTYPES[case.precision]
    grid = case.size // config.image.patch_size
    dim = config.embed_dim
    generator = torch.Generator().manual_seed(settings.seed)
    patch = torch.nn.functional.normalize(torch.randn(case.batch, grid, grid, dim, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(case.prompts, dim, generator=generator), dim=-1)
    out_size = (case.size, case.size)
    if case.variant == "reference":
        # The upsampled [B, D, S, S] float32 map plus the [B, K, S, S] logits.
        needed = 4 * case.batch * case.size * case.size * (dim + case.prompts)
        check_memory(case.device, needed, "the reference procedure")
    elif case.variant == "triton":
        require_cuda(case.device, "the Triton seg head")
    elif case.variant == "native":
        require_cuda(case.device, "the native CUDA seg head")
    patch = patch.to(device, dtype)
    text = text.to(device, dtype)

    if case.variant == "reference":
        from clippy_rt.kernels.seg_head_ref import seg_head_reference_procedure as procedure

        def run_reference(marks):
            procedure(patch, text, out_size)

        return run_reference, None
    if case.variant == "native":
        try:
            native = importlib.import_module("clippy_rt.kernels.native")
        except ImportError as exc:
            raise Unavailable(f"the native CUDA seg head is not available: {exc}") from None
        kernel = getattr(native, "seg_head_native", None)
        if kernel is None:
            raise Unavailable("clippy_rt.kernels.native has no seg_head_native")

        def run_native(marks):
            kernel(patch, text, out_size, return_scores=True)

        return run_native, None
    head = seg_head_module.seg_head
    impl = "triton" if case.variant == "triton" else "torch"

    def run_fused(marks):
        head(patch, text, out_size, return_scores=True, impl=impl)

    return run_fused, None


def end_to_end_case(case: Case, engine, settings: BenchSettings) -> Timed:
    frames = list(random_frames(case.batch, settings.frame_size, settings.seed))
    prompts = bench_prompts(case.prompts)
    engine.encode_text(prompts)
    if case.variant == "segment":
        def run_segment(marks):
            results = engine.segment(frames, prompts, size=case.size)
            for name, value in results[0].timings_ms.items():
                marks.add(name, value)

        return run_segment, None

    from clippy_rt.kernels.seg_head_ref import seg_head_reference_procedure

    dim = engine.config.embed_dim
    height, width = settings.frame_size
    check_memory(case.device, 4 * height * width * (dim + case.prompts),
                  "the reference procedure at the frame size")

    def run_reference_post(marks):
        # The stages of Engine.segment, timed the same way, with the reference procedure
        # (upsample all D channels, then the dot product) as post-processing.
        clock = HostSplit()
        pixels, prepared = engine.prepare(frames, case.size)
        marks.add("preprocess", clock.split())
        text = engine.encode_text(prompts)
        marks.add("text", clock.split())
        features = engine.encode_image(pixels)
        engine.synchronize()
        marks.add("image", clock.split())
        for index, item in enumerate(prepared):
            _, logits = seg_head_reference_procedure(features.patch[index:index + 1].to(text.device), text,
                                                     item.out_size)
            labels, scores = logits.argmax(dim=1), logits.max(dim=1).values
            labels.cpu()
            scores.cpu()
        marks.add("postprocess", clock.split())

    return run_reference_post, None


class HostSplit:
    def __init__(self) -> None:
        import time

        self._time = time.perf_counter
        self._last = self._time()

    def split(self) -> float:
        now = self._time()
        elapsed, self._last = (now - self._last) * 1000.0, now
        return elapsed




def gemm_case(case: Case, config, settings: BenchSettings, workdir) -> Timed:
    from .gemm import build_probes, probe_shape

    threads = settings.threads or torch.get_num_threads()
    probes, missing = build_probes([(case.backend, case.precision)], probe_shape(config.image, case.batch, case.size),
                                   threads, workdir, seed=settings.seed, repeats=1)
    if not probes:
        raise Unavailable(f"no GEMM probe for {case.backend} {case.precision}: "
                          f"{next(iter(missing.values()), 'not available')}")
    probe = probes[0]

    def run_probe(marks):
        probe.run()

    return run_probe, None


def case_flops(case: Case, config) -> Optional[float]:
    """Floating-point operations of the matrix products in one iteration of ``case`` (image
    tower and GEMM probe on the CPU), None for other stages."""
    from .gemm import image_tower_flops, probe_shape

    if is_cuda(case.device):
        return None
    if case.stage == "image":
        return image_tower_flops(config.image, case.batch, case.size)
    if case.stage == "gemm":
        m, k, n = probe_shape(config.image, case.batch, case.size)
        return 2.0 * m * k * n
    return None


def stream_case(case: Case, engine, settings: BenchSettings) -> Timed:
    """``Engine.stream`` on B uint8 frames per call: a camera loop with a fixed vocabulary.
    The stream is built once per case (K prompts, the case's size, ``batch`` = B); each
    iteration hands it the same B frames of the frame size, labels and scores coming back
    to the host. On CUDA with the torch backend the warm-up calls capture the CUDA graph
    the timed calls replay."""
    frames = list(random_frames(case.batch, settings.frame_size, settings.seed))
    stream = engine.stream(bench_prompts(case.prompts), size=case.size, batch=case.batch)

    def run_stream(marks):
        stream(frames)

    return run_stream, None
