"""The matrix on the tiny model: every stage on the CPU backends, skips with reasons, errors."""

from __future__ import annotations

import pytest
import torch

import clippy_rt
from clippy_rt.bench.plan import bench_prompts, plan_cases, resolve_source
from clippy_rt.bench.run import Runner, run_benchmark
from clippy_rt.bench.settings import BASELINE_VARIANT, VARIANTS, BenchSettings, Case
from clippy_rt.bench.stages import text_case
from clippy_rt.errors import InputError, ModelDirError

CUDA_ONLY = {("seg-head", "triton"), ("seg-head", "native")}


def test_every_stage_and_variant_runs_on_the_cpu_backends(cpu_run, onnx_available):
    assert not cpu_run.interrupted
    assert len(cpu_run.results) == cpu_run.planned
    seen = set()
    for result in cpu_run.results:
        case = result.case
        seen.add((case.stage, case.variant, case.backend))
        if (case.stage, case.variant) in CUDA_ONLY:
            assert result.status == "skipped"
            assert "CUDA" in result.reason
            continue
        if case.variant == "cuda-graph":
            continue
        if case.backend == "onnxruntime" and not onnx_available:
            assert result.status == "skipped" and "export" in result.reason.lower()
            continue
        assert result.status == "ok", (case.label(), result.reason)
        assert result.latency.count >= 2
        assert result.throughput == pytest.approx(case.items * result.latency.count / (result.latency.total / 1e3))
        assert result.peak_rss_bytes > 0
    for stage, variants in VARIANTS.items():
        for variant in variants:
            if variant == "cuda-graph":
                continue
            backends = ("-",) if stage in ("preprocess", "seg-head") else ("torch", "onnxruntime")
            if variant == "reference-post":
                backends = ("torch",)
            for backend in backends:
                assert (stage, variant, backend) in seen


def test_end_to_end_reports_the_engine_phases(cpu_run):
    ends = [r for r in cpu_run.results if r.case.stage == "end-to-end" and r.status == "ok"]
    assert {r.case.variant for r in ends} == {"segment", "reference-post"}
    for result in ends:
        assert set(result.phases) == {"preprocess", "text", "image", "postprocess"}
        assert sum(p.median for p in result.phases.values()) <= result.latency.max * 1.01


def test_baseline_rows_exist_for_every_measured_row(cpu_run):
    for result in cpu_run.results:
        if result.status != "ok":
            continue
        base = cpu_run.baseline_of(result)
        assert base is not None, result.case.label()
        assert base.case.variant == BASELINE_VARIANT[result.case.stage]
        assert base.case.precision in ("fp32", "-")


def test_cold_text_clears_the_cache_and_cached_text_does_not_encode(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir)
    calls = []
    original = engine._text_forward

    def counting(ids, mask):
        calls.append(ids.shape[0])
        return original(ids, mask)

    engine._text_forward = counting
    case = Case("text", "cold", "torch", "fp32", "cpu", None, None, 4)
    fn, setup = text_case(case, engine)
    for _ in range(3):
        setup()
        fn(None)
    assert calls == [4, 4, 4]
    calls.clear()
    fn, setup = text_case(Case("text", "cached", "torch", "fp32", "cpu", None, None, 4), engine)
    assert setup is None
    calls.clear()
    for _ in range(3):
        fn(None)
    assert calls == []


def test_plan_adds_the_baseline_and_groups_by_engine(tiny_model_dir, tmp_path, fast_settings):
    source = resolve_source(str(tiny_model_dir), None, tmp_path)
    settings = fast_settings(tiny_model_dir, backends=("onnxruntime",), precisions=("fp16",),
                             stages=("image", "seg-head", "end-to-end"))
    cases = plan_cases(settings, source.config)
    engines = [(c.backend, c.precision) for c in cases if c.stage != "seg-head"]
    assert engines[0] == ("torch", "fp32")  # the baseline combination, measured first
    assert engines == sorted(engines, key=engines.index)  # each combination contiguous
    assert {c.variant for c in cases if c.stage == "seg-head" and c.precision == "fp32"} == {"reference"}
    assert [c.backend for c in cases if c.variant == "reference-post"] == ["torch"]
    assert len(cases) == len(set(cases))


def test_prompts_are_distinct_beyond_the_voc_classes():
    prompts = bench_prompts(30)
    assert len(prompts) == 30 and len(set(prompts)) == 30
    assert bench_prompts(21) == prompts[:21]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on machines without CUDA")
def test_cuda_without_cuda_is_skipped_with_a_reason(tiny_model_dir, fast_settings):
    run = run_benchmark(fast_settings(tiny_model_dir, devices=("cpu", "cuda"), stages=("image", "seg-head")))
    cuda = [r for r in run.results if r.case.device == "cuda"]
    assert cuda and all(r.status == "skipped" and r.reason == "CUDA is not available on this machine"
                        for r in cuda)
    assert any(r.status == "ok" for r in run.results if r.case.device == "cpu")


def test_tensorrt_without_an_engine_dir_is_skipped(tiny_model_dir, fast_settings):
    run = run_benchmark(fast_settings(tiny_model_dir, backends=("tensorrt",), stages=("text",), baseline=None))
    assert [r.status for r in run.results] == ["skipped", "skipped"]
    assert all("engine directory" in r.reason for r in run.results)


def test_interrupt_keeps_what_finished(tiny_model_dir, fast_settings):
    def interrupt_after_two(cases):
        for index, case in enumerate(cases):
            if index == 2:
                raise KeyboardInterrupt
            yield case

    run = run_benchmark(fast_settings(tiny_model_dir, stages=("image", "text")), wrap=interrupt_after_two)
    assert run.interrupted
    assert len(run.results) == 2 and run.planned == 3
    assert all(r.status == "ok" for r in run.results)


@pytest.mark.parametrize("overrides, message", [
    (dict(backends=("torch", "tvm")), "unknown backend 'tvm'"),
    (dict(precisions=("int4",)), "unknown precision 'int4'"),
    (dict(stages=("decode",)), "unknown stage 'decode'"),
    (dict(devices=("tpu",)), "tpu"),
    (dict(batches=(0,)), "batches"),
    (dict(baseline=("torch", "fp64")), "baseline"),
    (dict(threads=0), "threads"),
])
def test_bad_settings_are_clear_errors(tiny_model_dir, overrides, message, fast_settings):
    with pytest.raises(InputError, match=message):
        fast_settings(tiny_model_dir, **overrides)


def test_model_or_arch_exactly_one():
    with pytest.raises(InputError, match="either"):
        BenchSettings()
    with pytest.raises(InputError, match="either"):
        BenchSettings(model="x", arch="tiny")
    with pytest.raises(InputError, match="unknown architecture"):
        BenchSettings(arch="vit-h")


def test_missing_or_unrecognised_directories_are_clear_errors(tmp_path, tiny_model_dir, fast_settings):
    with pytest.raises(ModelDirError, match="no such model, ONNX or engine directory"):
        run_benchmark(fast_settings(tmp_path / "missing-engine", backends=("tensorrt",)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="not a model, ONNX or engine directory"):
        run_benchmark(fast_settings(tmp_path / "empty"))
    with pytest.raises(ModelDirError, match="no such model, ONNX or engine directory"):
        run_benchmark(fast_settings(tiny_model_dir, engine_dir=str(tmp_path / "missing"), backends=("tensorrt",)))


def test_size_must_be_a_multiple_of_the_patch(tiny_model_dir, fast_settings):
    with pytest.raises(InputError, match="multiple of the model's patch size"):
        run_benchmark(fast_settings(tiny_model_dir, sizes=(36,)))


def test_reference_procedure_too_large_for_memory_is_skipped(tiny_model_dir, tmp_path, monkeypatch, fast_settings):
    from clippy_rt.bench import stages

    monkeypatch.setattr(stages, "available_host_memory", lambda: 1024)
    source = resolve_source(str(tiny_model_dir), None, tmp_path)
    settings = fast_settings(tiny_model_dir, stages=("seg-head",))
    result = Runner(settings, source, tmp_path).run_case(
        Case("seg-head", "reference", "-", "fp32", "cpu", 2, 32, 3))
    assert result.status == "skipped"
    assert "GiB" in result.reason


def test_baseline_is_added_only_where_the_input_can_run_it(tiny_model_dir, tmp_path, fast_settings):
    config = resolve_source(str(tiny_model_dir), None, tmp_path).config
    settings = fast_settings(tiny_model_dir, backends=("onnxruntime",), stages=("image",))
    from_onnx_dir = plan_cases(settings, config, "onnx")
    assert {c.backend for c in from_onnx_dir} == {"onnxruntime"}
    assert {c.backend for c in plan_cases(settings, config, "model")} == {"torch", "onnxruntime"}


@pytest.mark.gpu
def test_cuda_stages_report_transfers_and_device_time(tiny_model_dir, fast_settings):
    run = run_benchmark(fast_settings(tiny_model_dir, devices=("cuda",), stages=("image", "seg-head", "text"),
                                      cuda_graph=True))
    by_variant = {(r.case.stage, r.case.variant): r for r in run.results}
    for key in (("image", "forward"), ("image", "cuda-graph"), ("seg-head", "torch"), ("seg-head", "triton"),
                ("text", "cold")):
        result = by_variant[key]
        assert result.status == "ok", (key, result.reason)
        assert result.device_latency is not None and result.peak_device_bytes is not None
    for variant in ("forward", "cuda-graph"):
        assert set(by_variant[("image", variant)].phases) == {"h2d", "compute", "d2h"}


def test_int8_and_openvino_with_the_gemm_limit(tiny_model_dir, fast_settings, onnx_available):
    pytest.importorskip("openvino", reason="the openvino backend needs openvino (pip install 'clippy-rt[openvino]')")
    pytest.importorskip("nncf", reason="OpenVINO int8 graphs need nncf (pip install 'clippy-rt[openvino]')")
    if not onnx_available:
        pytest.skip("needs the ONNX exporter and onnxruntime (pip install 'clippy-rt[onnx]')")
    from clippy_rt.bench.gemm import image_tower_flops

    settings = fast_settings(tiny_model_dir, backends=("torch", "onnxruntime", "openvino"), precisions=("int8",),
                             stages=("image", "gemm", "seg-head"), batches=(1,))
    run = run_benchmark(settings)
    by_key = {(r.case.stage, r.case.backend, r.case.precision): r for r in run.results}
    # int8 is no torch precision: skipped with the loader's reason, never run as float.
    assert by_key[("image", "torch", "int8")].status == "skipped"
    assert "int8" in by_key[("image", "torch", "int8")].reason
    assert by_key[("gemm", "torch", "int8")].status == "skipped"
    # The seg head computes in float: planned for the fp32 baseline only.
    assert {r.case.precision for r in run.results if r.case.stage == "seg-head"} == {"fp32"}
    for backend in ("onnxruntime", "openvino"):
        image, probe = by_key[("image", backend, "int8")], by_key[("gemm", backend, "int8")]
        assert image.status == "ok" and probe.status == "ok", (image.reason, probe.reason)
    limit = max((by_key[("gemm", b, "int8")] for b in ("onnxruntime", "openvino")), key=lambda r: r.gflops)
    for backend in ("onnxruntime", "openvino"):
        image = by_key[("image", backend, "int8")]
        assert run.gemm_limit_of(image) is limit
        assert run.fraction_of_gemm_limit(image) == pytest.approx(
            image_tower_flops(clippy_rt.load(tiny_model_dir).config.image, 1, 32)
            / (image.latency.median * 1e6) / limit.gflops)
    # fp32 rows are compared with the fp32 probes only.
    torch_image = by_key[("image", "torch", "fp32")]
    assert run.gemm_limit_of(torch_image).case.precision == "fp32"
