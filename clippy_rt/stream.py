"""Streaming segmentation for camera loops: frames in, labels out, with a fixed prompt set.

    stream = engine.stream(prompts, size=448, resize="squash", batch=8, bgr=False)
    seg = stream(frame)              # one uint8 frame -> Segmentation
    segs = stream([f0, f1, f2])      # a list (any length; run `batch` frames at a time) -> list
    stream.set_prompts(new_prompts)  # the next call uses them

Each call composes the engine's public stages (``prepare`` -> ``encode_image`` in the
tower's dtype -> ``decode``, whose ``label`` stage runs the fused seg head and maps prompts
to classes) on frames of one size at a time, so labels equal ``Engine.segment``'s on the
same frames with the same ``preprocess`` choice.

On a CUDA engine whose backend runs its towers in torch (``engine.cuda_graphs``) and device pre-processing (the default for uint8
frames), the whole image path of a chunk (pre-processing kernel, image tower, seg head,
prompt -> class mapping) is captured in a CUDA graph per (chunk size, frame shape, prompt
bucket) after ``warmup`` eager runs on a side stream, then replayed. The text embeddings
and the prompt -> class map are graph inputs padded to a bucket of K (16, 32, 64, 128,
255, then multiples of 256): ``set_prompts`` copies into those buffers, so it never
re-captures unless the new set needs a bigger bucket. The padding rows repeat prompt 0
and map to its class; ties go to the lowest prompt index, so a padding row never wins a
pixel (its logit equals prompt 0's exactly) nor changes a score. Host frames go through pinned memory; while chunk n is replayed, chunk n+1 of the
same call is uploaded on a second CUDA stream (and with ``device_output=True``, where no
call waits for its results, the next call's upload overlaps the previous call's work).

On a CPU engine whose backend runs its towers in torch, the rest of a chunk's path after
pre-processing (with host pre-processing, after the PIL resize: normalisation, letterbox
padding, image tower, seg head, prompt -> class mapping) runs as a TorchScript trace per
(frame size and resize, prompt count, synonyms or not), recorded the second time a chunk
of that frame size and prompt count comes (the first runs eagerly, so a stream called once
records nothing; ``captures`` counts traces with the CUDA graphs; at most ``MAX_GRAPHS``
kept) and called
with the text embeddings and class map as inputs, so ``set_prompts`` with as many prompts
re-uses it. A trace takes chunks of any number of frames; the first chunk of each size it
meets also runs eagerly, and the trace answers chunks of that size only if its labels and
scores equal the eager ones (``traced_chunks`` counts the chunks it answered). A traced
call runs the eager path's torch operators in one call into C++ that releases the GIL:
Python threads beside the stream (a server's event loop, a camera reader) run while it
computes, where the eager path takes the GIL back between operators. Should tracing fail,
the stream warns once and stays eager.

Elsewhere (ONNX Runtime, TensorRT, ``graphs=False``) the same steps run eagerly.
A bad frame raises InputError / TypeError before anything is queued; the stream keeps
working for the next call.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

from .device_prep import PREPROCESS_CHOICES, as_frame_tensor, concrete_device, frames_of
from .errors import InputError
from .images import (RESIZE_MODES, Prepared, as_pixel_batch, check_input_size, normalise_frames, place_in_frame,
                     resize_frame)
from .numerics import check_finite
from .prompts import PromptSet, PromptsLike
from .results import PreparedBatch, Segmentation, class_label_dtype, is_single
from .validate import check_positive_int

# CUDA graphs kept at once (chunk sizes x frame shapes x prompt buckets); the oldest goes first.
MAX_GRAPHS = 8
# CPU traces: the (frame shape, prompt count) pairs remembered as met once.
MAX_SEEN = 64


def prompt_bucket(num_prompts: int) -> int:
    """The padded prompt count a graph is captured for: 16, 32, 64, 128, 255, then
    multiples of 256 (255 keeps labels in uint8)."""
    if num_prompts <= 255:
        return min(255, max(16, 1 << (num_prompts - 1).bit_length()))
    return -(-num_prompts // 256) * 256


@dataclass
class _Prompts:
    prompt_set: PromptSet
    text: torch.Tensor                  # [rows, D] float32 (graphs: K embeddings, then copies of the first)
    class_map: Optional[torch.Tensor]   # [rows]: class of each row (None: row j is class j)


@dataclass
class _Trace:
    traced: object                                # the torch.jit trace of a _TracedPath
    checked: set = field(default_factory=set)     # chunk sizes whose results equal the eager path's
    eager: set = field(default_factory=set)       # chunk sizes whose results do not: run eagerly


@dataclass
class _Graph:
    graph: object                 # torch.cuda.CUDAGraph
    frames: torch.Tensor          # static input [n, H0, W0, C] uint8
    labels: torch.Tensor          # static outputs [n, H, W]
    scores: torch.Tensor
    prepared: Prepared            # how each frame of this shape is resized (its crop box)


class _TracedPath(torch.nn.Module):
    """The CPU image path of one chunk as traced, for one output size and window: frames
    -> (labels [n, H, W], scores [n, H, W], whether the features are all finite, patch
    features [n, h, w, D], pooled [n, D]).

    Frames are pre-processed pixels [n, 3, S, S], or with ``plan`` (host pre-processing)
    the resized uint8 frames [n, h, w, 3] of ``images.resize_picture``, normalised here as
    ``images.prepare`` normalises them (and placed in the zero frame for a letterbox)."""

    def __init__(self, engine, out_size, window, plan=None) -> None:
        super().__init__()
        self.model = engine.model  # a submodule: its weights are the trace's parameters, not constants
        self.engine = engine
        self.out_size = tuple(out_size)
        self.window = window
        self.plan = plan
        cfg = engine.config.image
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1))

    def forward(self, frames: torch.Tensor, text: torch.Tensor, class_map: Optional[torch.Tensor] = None):
        engine = self.engine
        pixels = frames if self.plan is None else self._normalise(frames)
        patch, pooled = engine.image_tower(pixels)
        size = engine.config.image.patch_size
        patch = patch.reshape(patch.shape[0], pixels.shape[-2] // size, pixels.shape[-1] // size, patch.shape[-1])
        # "torch": the seg head "auto" picks for CPU tensors (the eager path's).
        labels, scores = engine.label(patch, text, self.out_size, self.window, class_map, "torch")
        finite = torch.isfinite(patch).all() & torch.isfinite(pooled).all()
        return labels, scores, finite, patch, pooled

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:
        return place_in_frame(normalise_frames(frames, self.mean, self.std), self.plan)


def _trace(module: torch.nn.Module, inputs: tuple):
    """``torch.jit.trace`` without its deprecation notice and its warnings about Python
    values fixed in the trace (the key a trace is kept under covers every one of them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.inference_mode():
            return torch.jit.trace(module, inputs, check_trace=False)


class Stream:
    """See the module doc. Build it with ``Engine.stream``; arguments as there, plus
    ``preprocess`` ("auto", "device", "kernel", "host": see ``Engine.prepare``), ``graphs`` (capture
    CUDA graphs, or on the CPU TorchScript traces, where possible) and ``warmup`` (eager runs
    before a CUDA graph capture)."""

    def __init__(self, engine, prompts: PromptsLike, *, size=None, resize: str = "squash", batch: int = 8,
                 bgr: bool = False, template: Optional[str] = None, device_output: bool = False,
                 preprocess: str = "auto", graphs: bool = True, warmup: int = 2) -> None:
        cfg = engine.config.image
        if resize not in RESIZE_MODES:
            raise InputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        check_positive_int("batch", batch)
        if preprocess not in PREPROCESS_CHOICES:
            raise InputError(f"preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {preprocess!r}")
        check_positive_int("warmup", warmup)
        self.engine = engine
        self.input_size = check_input_size(cfg.image_size if size is None else size, cfg.patch_size)
        self.resize = resize
        self.batch = batch
        self.bgr = bool(bgr)
        self.device_output = bool(device_output)
        self.device = concrete_device(engine.device)
        on_cuda = self.device.type == "cuda"
        self.preprocess = ("device" if on_cuda else "host") if preprocess == "auto" else preprocess
        self.uses_graphs = (bool(graphs) and on_cuda and self.preprocess in ("device", "kernel")
                            and engine.cuda_graphs)
        self.uses_traces = (bool(graphs) and self.device.type == "cpu" and engine.cuda_graphs
                            and isinstance(engine.model, torch.nn.Module))
        self.warmup = warmup
        self._graphs: "OrderedDict[tuple, _Graph]" = OrderedDict()
        self._traces: "OrderedDict[tuple, _Trace]" = OrderedDict()
        self._seen: "OrderedDict[tuple, None]" = OrderedDict()  # (frame shape, prompt rows, class map?) met
        self._buffers = {}  # bucket -> (text [bucket, D], class_map [bucket]) graph inputs
        self.captures = 0
        self.traced_chunks = 0  # chunks answered by a CPU trace
        self._upload_stream = torch.cuda.Stream(self.device) if self.uses_graphs else None
        self._prompts: Optional[_Prompts] = None
        self.set_prompts(prompts, template)

    # -- prompts -------------------------------------------------------------------------
    @property
    def prompts(self) -> Tuple[str, ...]:
        """The class names labels index into."""
        return self._prompts.prompt_set.classes

    def set_prompts(self, prompts: PromptsLike, template: Optional[str] = None) -> None:
        """Use ``prompts`` (a list or ``{class: [prompt, ...]}``) from the next call on, filled
        into ``template`` (default: the model's; ``"{}"``: verbatim) as ``Engine.segment`` does.

        Encodes only prompts the engine has not cached. Raises InputError for a bad set,
        leaving the current one in place."""
        prompt_set = self.engine.prompt_set(prompts, template)
        embeds = self.engine.encode_text(list(prompt_set.prompts)).float()
        if not self.uses_graphs:
            class_map = prompt_set.class_map() if prompt_set.has_synonyms else None
            self._prompts = _Prompts(prompt_set, embeds.to(self.device), class_map)
            return
        # A captured graph serves every prompt set of its bucket, synonyms or not: the text
        # rows are padded to the bucket and always mapped (a bucket holds any class index).
        count = embeds.shape[0]
        bucket = prompt_bucket(count)
        text = torch.cat([embeds, embeds[:1].expand(bucket - count, -1)]).to(self.device)
        class_map = prompt_set.class_map(bucket).to(self.device, class_label_dtype(bucket))
        buffers = self._buffers.get(bucket)
        if buffers is None:
            buffers = self._buffers[bucket] = (torch.empty_like(text), torch.empty_like(class_map))
        # Queued on the compute stream: earlier replays read the old prompts first.
        buffers[0].copy_(text)
        buffers[1].copy_(class_map)
        text, class_map = buffers
        self._prompts = _Prompts(prompt_set, text, class_map)

    # -- frames --------------------------------------------------------------------------
    def __call__(self, frames):
        """One frame -> Segmentation; a list (or [B, H, W, C]) -> list of Segmentation."""
        start = time.perf_counter()
        single = is_single(frames)
        items = self._check(frames)
        prompts = self._prompts
        chunks = self._chunks(items)
        if self.uses_graphs:
            results = self._run_graphs(chunks, prompts)
        else:
            results = [seg for chunk in chunks for seg in self._run_eager(chunk, prompts)]
        if not self.device_output and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        elapsed = (time.perf_counter() - start) * 1000.0
        for result in results:
            result.timings_ms = {"stream": elapsed}
        return results[0] if single else results

    def _check(self, frames) -> List[torch.Tensor]:
        items = frames_of(frames)
        if items is None:
            if isinstance(frames, (list, tuple)):
                items = list(frames)
            else:
                items = [frames]
        if not items:
            raise InputError("no frames given")
        patch = self.engine.config.image.patch_size
        tensors = []
        for index, item in enumerate(items):
            if not isinstance(item, (np.ndarray, torch.Tensor)):
                raise TypeError(f"frame {index}: a stream takes uint8 frames (numpy or torch [H, W, C]), "
                                f"got {type(item).__name__}")
            tensor = as_frame_tensor(item, index)
            if tensor.shape[0] < patch or tensor.shape[1] < patch:
                raise InputError(f"frame {index} is {tensor.shape[1]}x{tensor.shape[0]} pixels (width x "
                                 f"height), smaller than one {patch}x{patch} patch")
            tensors.append(tensor)
        return tensors

    def _chunks(self, items: List[torch.Tensor]) -> List[List[torch.Tensor]]:
        """Consecutive frames of one shape, at most ``batch`` per chunk."""
        chunks: List[List[torch.Tensor]] = []
        for item in items:
            if chunks and len(chunks[-1]) < self.batch and chunks[-1][0].shape == item.shape:
                chunks[-1].append(item)
            else:
                chunks.append([item])
        return chunks

    def _run_eager(self, chunk: List[torch.Tensor], prompts: _Prompts) -> List[Segmentation]:
        """One chunk through the engine's stages (prepare, encode_image, decode), or their
        trace on the CPU."""
        if self.preprocess == "host":
            frames = [frame.cpu().numpy() for frame in chunk]
        else:
            frames = torch.stack([frame.to(self.device) for frame in chunk])
        if self.uses_traces:
            results = self._run_traced(frames, prompts)
            if results is not None:
                return results
        return self._stages(frames, prompts)

    def _stages(self, frames, prompts: _Prompts) -> List[Segmentation]:
        engine = self.engine
        batch = engine.prepare(frames, self.input_size, self.resize, self.bgr, self.preprocess)
        features = engine.encode_image(batch, dtype=None)
        return engine.decode(features, prompts.text, prompts.prompt_set, device_output=self.device_output,
                             class_map=prompts.class_map)

    # -- CPU traces ----------------------------------------------------------------------
    def _trace_input(self, frames) -> Optional[Tuple[torch.Tensor, List[Prepared], object]]:
        """(trace input, how each frame was resized, the resize plan the trace normalises
        with; None for device pre-processing), or None when the frames of the chunk were
        not resized alike. Host pre-processing stops after the PIL resize (``images.resize_frame``,
        which skips PIL for a frame left at its size; as ``Engine.prepare``'s host path); the
        trace normalises."""
        if self.preprocess != "host":
            batch = self.engine.prepare(frames, self.input_size, self.resize, self.bgr, self.preprocess)
            pixels = as_pixel_batch(batch.pixels, self.engine.config.image.patch_size)
            prepared, plan = batch.prepared, None
        else:
            patch_size = self.engine.config.image.patch_size
            resized = [resize_frame(frame, self.input_size, mode=self.resize, patch_size=patch_size, bgr=self.bgr)
                       for frame in frames]
            plan = resized[0][1]
            if any(item[1] != plan for item in resized):
                return None
            pixels = torch.from_numpy(np.stack([picture for picture, _ in resized]))
            prepared = [Prepared(None, p.original_size, p.out_size, p.window, p.crop_box) for _, p in resized]
        first = prepared[0]
        if any((p.out_size, p.window) != (first.out_size, first.window) for p in prepared):
            return None
        return pixels, prepared, plan

    def _run_traced(self, frames, prompts: _Prompts) -> Optional[List[Segmentation]]:
        """A chunk through the trace of its frame size, prompt count and resize (None: run
        the stages eagerly). A trace takes any number of frames; the first chunk of each
        size it meets also runs eagerly, and only a trace whose labels and scores equal the
        eager ones for that size answers chunks of that size from then on."""
        # A frame size and prompt count seen for the first time runs eagerly: a stream
        # called once (one image, a test) never pays for a trace it would not re-use.
        seen = (tuple(frames[0].shape), tuple(prompts.text.shape), prompts.class_map is not None)
        if seen not in self._seen:
            self._seen[seen] = None
            while len(self._seen) > MAX_SEEN:
                self._seen.popitem(last=False)
            return None
        found = self._trace_input(frames)
        if found is None:
            return None
        pixels, prepared, plan = found
        first = prepared[0]
        inputs = (pixels, prompts.text) if prompts.class_map is None else (pixels, prompts.text, prompts.class_map)
        key = (tuple(pixels.shape[1:]), pixels.dtype, plan, tuple(first.out_size), first.window,
               tuple(prompts.text.shape), prompts.class_map is not None)
        entry = self._traces.get(key)
        if entry is None:
            try:
                traced = _trace(_TracedPath(self.engine, first.out_size, first.window, plan), inputs)
            except Exception as error:  # noqa: BLE001 - any failure leaves the eager path, which is exact
                warnings.warn(f"clippy-rt: the stream's CPU path could not be traced ({type(error).__name__}: "
                              f"{error}); it runs eagerly", RuntimeWarning, stacklevel=4)
                self.uses_traces = False
                return None
            if len(self._traces) >= MAX_GRAPHS:
                self._traces.popitem(last=False)
            entry = self._traces[key] = _Trace(traced)
            self.captures += 1
        else:
            self._traces.move_to_end(key)
        count = pixels.shape[0]
        if count in entry.eager:
            return None
        with torch.inference_mode():
            labels, scores, finite, patch, pooled = entry.traced(*inputs)
        if not bool(finite):  # the eager path's checks, for their messages
            check_finite(patch, "patch features")
            check_finite(pooled, "image embeddings")
        classes = prompts.prompt_set.classes
        labels = labels.to(class_label_dtype(len(classes)))
        results = [Segmentation(labels=labels[row], scores=scores[row], prompts=classes, crop_box=item.crop_box)
                   for row, item in enumerate(prepared)]
        if count not in entry.checked:
            expected = self._stages(frames, prompts)
            if not all(torch.equal(got.labels, want.labels) and torch.equal(got.scores, want.scores)
                       for got, want in zip(results, expected)):
                entry.eager.add(count)
                return expected
            entry.checked.add(count)
        self.traced_chunks += 1
        return results

    def _compute(self, frames: torch.Tensor, prompts: _Prompts) -> Tuple[torch.Tensor, torch.Tensor, Prepared]:
        """The captured image path of one chunk of device frames: (labels [n, H, W] class
        indices in the bucket's dtype, scores [n, H, W], how the frames were resized)."""
        engine = self.engine
        batch = engine.prepare(frames, self.input_size, self.resize, self.bgr, self.preprocess)
        features = engine.encode_image(batch, dtype=None)
        first = batch.prepared[0]
        labels, scores = engine.label(features.patch, prompts.text, first.out_size, first.window, prompts.class_map)
        return labels, scores, first

    # -- CUDA graphs ---------------------------------------------------------------------
    def _stage(self, chunk: List[torch.Tensor]):
        """Queue the upload of a chunk on the upload stream: (device tensor, ready event)."""
        if all(frame.device == self.device for frame in chunk):
            return torch.stack(chunk), None
        host = torch.empty((len(chunk), *chunk[0].shape), dtype=torch.uint8, pin_memory=True)
        torch.stack([frame.cpu() for frame in chunk], out=host)
        ready = torch.cuda.Event()
        with torch.cuda.stream(self._upload_stream):
            on_device = host.to(self.device, non_blocking=True)
            ready.record(self._upload_stream)
        return on_device, ready

    def _graph(self, frames: torch.Tensor, prompts: _Prompts) -> _Graph:
        key = (tuple(frames.shape), prompts.text.shape[0])
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            return entry
        static = frames.clone()
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        # Kernels compile, cuBLAS picks its algorithms and caches fill before capture.
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._compute(static, prompts)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            labels, scores, prepared = self._compute(static, prompts)
        if len(self._graphs) >= MAX_GRAPHS:
            self._graphs.popitem(last=False)
        entry = self._graphs[key] = _Graph(graph, static, labels, scores, prepared)
        self.captures += 1
        return entry

    def _run_graphs(self, chunks, prompts: _Prompts) -> List[Segmentation]:
        current = torch.cuda.current_stream(self.device)
        classes = prompts.prompt_set.classes
        dtype = class_label_dtype(len(classes))
        results = []
        staged = self._stage(chunks[0])
        for index, chunk in enumerate(chunks):
            frames, ready = staged
            if ready is not None:
                current.wait_event(ready)
                frames.record_stream(current)
            entry = self._graph(frames, prompts)
            entry.frames.copy_(frames)
            entry.graph.replay()
            if self.device_output:
                labels, scores = entry.labels.to(dtype, copy=True), entry.scores.clone()
            else:
                labels = torch.empty(entry.labels.shape, dtype=dtype, pin_memory=True)
                scores = torch.empty(entry.scores.shape, dtype=entry.scores.dtype, pin_memory=True)
                labels.copy_(entry.labels, non_blocking=True)
                scores.copy_(entry.scores, non_blocking=True)
            results += [Segmentation(labels=labels[row], scores=scores[row], prompts=classes,
                                     crop_box=entry.prepared.crop_box) for row in range(labels.shape[0])]
            if index + 1 < len(chunks):
                staged = self._stage(chunks[index + 1])  # overlaps the replay just queued
        return results
