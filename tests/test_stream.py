"""Engine.stream: labels equal Engine.segment's, chunking, prompt changes, padding of the
prompt bucket, bad frames; CUDA graphs on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.errors import InputError
from clippy_rt.stream import prompt_bucket

PROMPTS = ["a red circle", "a blue square", "noise", "a green star", "grass"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _frames(count, height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def _assert_same(results, expected):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert got.labels.dtype == torch.uint8 and got.labels.shape == want.labels.shape
        assert torch.equal(got.labels, want.labels)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=0)
        assert got.prompts == want.prompts and got.crop_box == want.crop_box


def test_prompt_buckets():
    assert [prompt_bucket(k) for k in (1, 16, 17, 21, 64, 65, 200, 255, 256, 300)] == \
        [16, 16, 32, 32, 64, 128, 255, 255, 256, 512]


@pytest.mark.parametrize("preprocess", ["host", "device"])
@pytest.mark.parametrize("resize", ["squash", "crop", "letterbox"])
def test_stream_equals_segment(engine, resize, preprocess):
    frames = _frames(5) + _frames(2, 64, 48, seed=1)
    stream = engine.stream(PROMPTS, resize=resize, batch=2, preprocess=preprocess)
    expected = [engine.segment(f, PROMPTS, resize=resize, preprocess=preprocess) for f in frames]
    _assert_same(stream(frames), expected)
    single = stream(frames[3])
    _assert_same([single], [expected[3]])
    assert single.labels.shape == (expected[3].labels.shape)


def test_set_prompts_and_synonyms(engine):
    frames = _frames(3, seed=2)
    stream = engine.stream(PROMPTS, batch=4)
    synonyms = {"background": ["grass", "noise"], "shape": ["a red circle", "a blue square"]}
    stream.set_prompts(synonyms)
    assert stream.prompts == ("background", "shape")
    _assert_same(stream(frames), engine.segment(frames, synonyms))
    with pytest.raises(InputError):
        stream.set_prompts([])
    assert stream.prompts == ("background", "shape")  # a bad set leaves the old one in place
    stream.set_prompts(PROMPTS[:3], template="a photo of {}")
    _assert_same(stream(frames), engine.segment(frames, PROMPTS[:3], template="a photo of {}"))


def test_padding_rows_never_win(engine, monkeypatch):
    # Patch features with non-negative entries and prompts with negative entries: every real
    # logit is negative, so a zero row in the padding (logit 0) would win every pixel.
    forward = engine._image_forward

    def non_negative_features(pixels):
        patch, pooled = forward(pixels)
        return torch.nn.functional.normalize(patch.abs(), dim=-1), pooled

    rng = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(-torch.rand(3, engine.config.embed_dim, generator=rng), dim=-1)
    table = dict(zip(["one", "two", "three"], directions))
    monkeypatch.setattr(engine, "_image_forward", non_negative_features)
    monkeypatch.setattr(engine, "encode_text", lambda prompts: torch.stack([table[p] for p in prompts]))
    frames = _frames(2, seed=3)
    results = engine.stream(["one", "two", "three"], template="{}")(frames)
    expected = engine.segment(frames, ["one", "two", "three"], template="{}")
    assert all((r.scores < 0).all() for r in results)
    assert len(set(torch.cat([r.labels.flatten() for r in results]).tolist())) > 1
    _assert_same(results, expected)


def test_bad_frames_raise_and_the_stream_keeps_working(engine):
    frames = _frames(2, seed=4)
    stream = engine.stream(PROMPTS)
    expected = stream(frames)
    for bad, error in ((np.zeros((40, 56), dtype=np.float32), TypeError),
                       (np.zeros((4, 56, 3), dtype=np.uint8), InputError),
                       (torch.zeros(3, 40, 56, dtype=torch.uint8), InputError),
                       ("frame.png", TypeError),
                       ([], InputError)):
        with pytest.raises(error):
            stream([frames[0], bad] if not isinstance(bad, list) else bad)
    _assert_same(stream(frames), expected)


def test_more_than_255_classes_give_int64_labels(engine):
    prompts = [f"object {i}" for i in range(256)]
    frame = _frames(1, seed=5)[0]
    result = engine.stream(prompts)(frame)
    expected = engine.segment(frame, prompts)
    assert result.labels.dtype == torch.int64 and expected.labels.dtype == torch.int64
    assert torch.equal(result.labels, expected.labels)


def test_stream_arguments_are_checked(engine):
    for kwargs, match in (({"batch": 0}, "batch"), ({"resize": "fit"}, "resize"),
                          ({"preprocess": "gpu"}, "preprocess"), ({"size": 30}, "multiples")):
        with pytest.raises(InputError, match=match):
            engine.stream(PROMPTS, **kwargs)


def test_cpu_traces_are_kept_per_shape_and_prompt_count(engine):
    frames, other = _frames(3, seed=8), _frames(2, 64, 48, seed=9)
    stream = engine.stream(PROMPTS, batch=4)
    assert stream.uses_traces and not stream.uses_graphs
    _assert_same(stream(frames), engine.segment(frames, PROMPTS))
    assert stream.captures == 0 and stream.traced_chunks == 0  # met once: eager
    _assert_same(stream(frames), engine.segment(frames, PROMPTS))
    assert stream.captures == 1 and stream.traced_chunks == 1
    # Chunks of other sizes through the same trace (each checked against the stages once).
    for count in (1, 2, 4, 1):
        _assert_same(stream(_frames(count, seed=20 + count)), engine.segment(_frames(count, seed=20 + count),
                                                                            PROMPTS))
    assert stream.captures == 1 and stream.traced_chunks == 5
    # Other prompts, as many: the same trace, with the new embeddings as its input.
    others = ["a yellow ring", "a dotted cross", "sky", "a black triangle", "water"]
    stream.set_prompts(others)
    _assert_same(stream(frames), engine.segment(frames, others))
    assert stream.captures == 1 and stream.traced_chunks == 6
    for _ in range(2):  # another frame size: eager, then its own trace
        _assert_same(stream(other), engine.segment(other, others))
    assert stream.captures == 2 and stream.traced_chunks == 7
    synonyms = {"background": ["grass", "noise"], "shape": ["a red circle", "a blue square"]}
    stream.set_prompts(synonyms)  # a class map: another trace
    for _ in range(2):
        _assert_same(stream(frames), engine.segment(frames, synonyms))
    assert stream.captures == 3 and stream.traced_chunks == 8
    stream.set_prompts(others)
    _assert_same(stream(frames), engine.segment(frames, others))
    assert stream.captures == 3 and stream.traced_chunks == 9


def test_cpu_trace_bounds_and_eager_choice(engine):
    stream = engine.stream(PROMPTS, batch=1)
    for height in range(16, 16 * 11, 16):  # 10 frame shapes, twice each
        frame = _frames(1, height, 32, seed=height)[0]
        for _ in range(2):
            _assert_same([stream(frame)], [engine.segment(frame, PROMPTS)])
    assert stream.captures == 10 and len(stream._traces) == 8 and stream.traced_chunks == 10
    eager = engine.stream(PROMPTS, graphs=False)
    assert not eager.uses_traces
    for _ in range(2):
        _assert_same(eager(_frames(2, seed=10)), engine.segment(_frames(2, seed=10), PROMPTS))
    assert eager.captures == 0 and eager.traced_chunks == 0


def test_a_trace_that_differs_from_the_stages_never_answers(engine, monkeypatch):
    from clippy_rt import stream as stream_module

    forward = stream_module._TracedPath.forward

    def off_after_the_first(self, frames, text, class_map=None):
        labels, scores, finite, patch, pooled = forward(self, frames, text, class_map)
        scores = torch.cat([scores[:1], scores[1:] + 1.0])  # wrong in chunks of two frames or more
        return labels, scores, finite, patch, pooled

    monkeypatch.setattr(stream_module._TracedPath, "forward", off_after_the_first)
    stream = engine.stream(PROMPTS, batch=4)
    for count in (1, 1, 2, 3, 1, 2, 3):
        frames = _frames(count, seed=30 + count)
        _assert_same(stream(frames), engine.segment(frames, PROMPTS))
    assert stream.captures == 1 and stream.traced_chunks == 2  # the chunks of one frame, after the first


def test_a_failed_trace_warns_once_and_runs_eagerly(engine, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("tracing is unavailable")

    monkeypatch.setattr(torch.jit, "trace", broken)
    frames = _frames(2, seed=11)
    stream = engine.stream(PROMPTS)
    _assert_same(stream(frames), engine.segment(frames, PROMPTS))
    with pytest.warns(RuntimeWarning, match="tracing is unavailable"):
        _assert_same(stream(frames), engine.segment(frames, PROMPTS))
    assert not stream.uses_traces and stream.captures == 0
    for _ in range(2):
        _assert_same(stream(_frames(2, 64, 48, seed=12)), engine.segment(_frames(2, 64, 48, seed=12), PROMPTS))
    assert len(calls) == 1


def test_non_finite_features_raise_on_the_traced_path(tiny_model_dir):
    from clippy_rt.errors import NumericsError

    engine = clippy_rt.load(tiny_model_dir)
    stream = engine.stream(PROMPTS)
    frames = _frames(2, seed=13)
    for _ in range(2):
        _assert_same(stream(frames), engine.segment(frames, PROMPTS))
    assert stream.traced_chunks == 1
    with torch.no_grad():
        next(engine.model.visual.parameters()).fill_(float("nan"))
    with pytest.raises(NumericsError, match="patch features"):
        stream(frames)
    assert stream.traced_chunks == 1
    with pytest.raises(NumericsError, match="patch features"):
        engine.segment(frames, PROMPTS)


@pytest.fixture(scope="module")
def cuda_engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir, device="cuda", precision="fp16")


@pytest.mark.gpu
@pytest.mark.parametrize("resize", ["squash", "letterbox"])
def test_cuda_graphs_equal_segment_and_keep_their_capture(cuda_engine, resize):
    frames = _frames(4, 120, 160, seed=6)
    stream = cuda_engine.stream(PROMPTS, resize=resize, batch=4)
    assert stream.uses_graphs
    first = stream(frames)
    _assert_same(first, cuda_engine.segment(frames, PROMPTS, resize=resize))
    assert stream.captures == 1
    _assert_same(stream(frames), first)  # a replay
    stream.set_prompts(PROMPTS[:3])  # same bucket (16): no new capture
    _assert_same(stream(frames), cuda_engine.segment(frames, PROMPTS[:3], resize=resize))
    synonyms = {"background": ["grass", "noise"], "shape": ["a red circle", "a blue square"]}
    stream.set_prompts(synonyms)  # the class map is a graph input too
    _assert_same(stream(frames), cuda_engine.segment(frames, synonyms, resize=resize))
    stream.set_prompts(PROMPTS[:3])
    assert stream.captures == 1
    # Device tensors in, device tensors out.
    on_device = cuda_engine.stream(PROMPTS[:3], resize=resize, batch=4, device_output=True)
    results = on_device([torch.from_numpy(f).cuda() for f in frames])
    assert all(r.labels.is_cuda for r in results)
    for got, want in zip(results, stream(frames)):
        assert torch.equal(got.labels.cpu(), want.labels)


@pytest.mark.gpu
def test_cuda_stream_chunks_and_bad_frames(cuda_engine):
    frames = _frames(5, 96, 128, seed=7)
    stream = cuda_engine.stream(PROMPTS, batch=2)
    expected = [cuda_engine.segment(f, PROMPTS) for f in frames]
    with pytest.raises(InputError):
        stream([frames[0], np.zeros((3, 3, 3), dtype=np.uint8)])
    results = stream(frames)
    assert stream.captures == 2  # chunks of 2 and of 1
    for got, want in zip(results, expected):
        # Chunks of 2 against batches of 1: kernels may differ in the last bit of a feature.
        assert (got.labels == want.labels).float().mean() > 0.999


def test_prompt_buckets_hold_every_count():
    for count in range(1, 1100):
        bucket = prompt_bucket(count)
        assert bucket >= count and (bucket <= 255 or bucket % 256 == 0)
    assert [prompt_bucket(n) for n in (255, 256, 257, 512, 513)] == [255, 256, 512, 512, 768]


@pytest.mark.parametrize("batch, sizes", [(1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (5, [5]), (8, [5])])
def test_chunks_never_exceed_the_batch(engine, batch, sizes):
    stream = engine.stream(PROMPTS, size=32, batch=batch)
    seen = []
    run = stream._run_eager
    stream._run_eager = lambda chunk, prompts: (seen.append(len(chunk)), run(chunk, prompts))[1]
    assert len(stream(_frames(5))) == 5
    assert seen == sizes
