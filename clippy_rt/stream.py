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

Elsewhere (CPU, ONNX Runtime, TensorRT, host pre-processing) the same steps run eagerly.
A bad frame raises InputError / TypeError before anything is queued; the stream keeps
working for the next call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from .device_prep import PREPROCESS_CHOICES, as_frame_tensor, concrete_device, frames_of
from .errors import InputError
from .images import RESIZE_MODES, Prepared, check_input_size
from .prompts import PromptSet, PromptsLike
from .results import Segmentation, class_label_dtype, is_single
from .validate import check_positive_int

# CUDA graphs kept at once (chunk sizes x frame shapes x prompt buckets); the oldest goes first.
MAX_GRAPHS = 8


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
class _Graph:
    graph: object                 # torch.cuda.CUDAGraph
    frames: torch.Tensor          # static input [n, H0, W0, C] uint8
    labels: torch.Tensor          # static outputs [n, H, W]
    scores: torch.Tensor
    prepared: Prepared            # how each frame of this shape is resized (its crop box)


class Stream:
    """See the module doc. Build it with ``Engine.stream``; arguments as there, plus
    ``preprocess`` ("auto", "device", "kernel", "host": see ``Engine.prepare``), ``graphs`` (capture
    CUDA graphs where possible) and ``warmup`` (eager runs before a capture)."""

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
        self.warmup = warmup
        self._graphs: "OrderedDict[tuple, _Graph]" = OrderedDict()
        self._buffers = {}  # bucket -> (text [bucket, D], class_map [bucket]) graph inputs
        self.captures = 0
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
            self._prompts = _Prompts(prompt_set, embeds.to(self.device), None)
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
        """One chunk through the engine's stages: prepare, encode_image, decode."""
        if self.preprocess == "host":
            frames = [frame.cpu().numpy() for frame in chunk]
        else:
            frames = torch.stack([frame.to(self.device) for frame in chunk])
        engine = self.engine
        batch = engine.prepare(frames, self.input_size, self.resize, self.bgr, self.preprocess)
        features = engine.encode_image(batch, dtype=None)
        return engine.decode(features, prompts.text, prompts.prompt_set, device_output=self.device_output,
                             class_map=prompts.class_map)

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
