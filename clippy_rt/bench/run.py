"""Running a planned matrix: one engine loaded at a time, one result per case, never
stopping for a case that cannot run (its reason is reported)."""

from __future__ import annotations

import datetime
import gc
import importlib
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from clippy_rt.errors import BackendUnavailableError, ClippyError, InputError, ModelDirError
from clippy_rt.backends import backend_record
from clippy_rt.formats.kinds import ENGINE, KIND_NAMES, ONNX

from .plan import ModelSource, plan_cases, resolve_source
from .settings import BenchRun, BenchSettings, Case, CaseResult, PreparationFailed, Unavailable
from .stages import (Timed, case_flops, end_to_end_case, gemm_case, image_case, preprocess_case, seg_head_case,
                     stream_case, text_case)
from .stats import summarize
from .timer import is_cuda, measure, peak_device_bytes, peak_rss_bytes, reset_peak_memory




class _Engines:
    """Loads one engine at a time (the previous one is released), remembering failures."""

    def __init__(self, source: ModelSource, workdir: Path, onnx_precisions: Sequence[str],
                 onnx_dir: Optional[ModelSource] = None, engine_dir: Optional[ModelSource] = None,
                 int8_exports: Iterable[str] = ()) -> None:
        self.source = source
        self.int8_exports = set(int8_exports)
        self.workdir = workdir
        self.onnx_precisions = tuple(onnx_precisions)
        self.onnx_source = onnx_dir
        self.engine_source = engine_dir
        self._key: Optional[Tuple[str, str, str]] = None
        self._engine = None
        self._failures: Dict[Tuple[str, str, str], BaseException] = {}
        self._onnx_dir: Optional[Path] = None
        self._onnx_error: Optional[BaseException] = None

    def get(self, device: str, backend: str, precision: str):
        key = (device, backend, precision)
        if key in self._failures:
            raise self._failures[key]
        if key == self._key:
            return self._engine
        self.release()
        try:
            engine = self._load(device, backend, precision)
        except Exception as exc:  # remembered and reported per case; the rest goes on
            self._failures[key] = exc
            raise
        self._key, self._engine = key, engine
        return engine

    def release(self) -> None:
        self._key, self._engine = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, device: str, backend: str, precision: str):
        import clippy_rt

        record = backend_record(backend)
        kind = self.source.kind
        extra = {ONNX: self.onnx_source, ENGINE: self.engine_source}.get(record.artifact_kind)
        if extra is not None:
            path = extra.path
        elif kind == record.artifact_kind:
            path = self.source.path
        elif kind in record.made_from and record.artifact_kind == ONNX:
            path = self._onnx_path()
        else:
            wanted = " or ".join(KIND_NAMES[k] for k in (record.artifact_kind, *record.made_from))
            hint = {ENGINE: " (ENGINE_DIR, made by `clippy-rt build`); engines are not built during a benchmark",
                    ONNX: " (ONNX_DIR, made by `clippy-rt export`)"}.get(record.artifact_kind, "")
            raise Unavailable(f"the {backend} backend needs {wanted}{hint}; {self.source.path} is {KIND_NAMES[kind]}")
        return clippy_rt.load(path, backend=backend, device=device, precision=precision)

    def _onnx_path(self) -> Path:
        """Export the model directory to ONNX once per run (fp16 and int8 graphs when asked for;
        OpenVINO's int8 graphs too when the openvino backend runs int8)."""
        if self._onnx_error is not None:
            raise self._onnx_error
        if self._onnx_dir is not None:
            return self._onnx_dir
        try:
            self._onnx_dir = self._export()
        except Exception as exc:
            self._onnx_error = exc
            raise
        return self._onnx_dir

    def _calibration(self):
        """Generated calibration scenes for OpenVINO's int8 graphs, or None where NNCF is missing
        (the openvino int8 cases then say the directory has no such graphs)."""
        if "openvino_int8" not in self.int8_exports:
            return None
        try:
            importlib.import_module("nncf")
        except ImportError:
            return None
        from clippy_rt.datasets.calibration import calibration_set

        return calibration_set()

    def _export(self) -> Path:
        try:
            spec = importlib.util.find_spec("clippy_rt.export.onnx")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            raise Unavailable("ONNX export is not available in this install (no clippy_rt.export.onnx); "
                              "give an ONNX_DIR made by `clippy-rt export` instead")
        module = importlib.import_module("clippy_rt.export.onnx")
        export = getattr(module, "export_onnx", None)
        if export is None:
            raise Unavailable("clippy_rt.export.onnx has no export_onnx(); give an ONNX_DIR instead")
        out = self.workdir / "onnx"
        # One parity check at the model's own size keeps the export short; `clippy-rt export`
        # is the place for the full check.
        calibration = self._calibration()
        try:
            export(self.source.path, out, fp16="fp16" in self.onnx_precisions, int8="int8" in self.int8_exports,
                   openvino_int8=calibration is not None, calibration=calibration,
                   check_sizes=[self.source.config.image.image_size], check_batches=(1,))
        except ImportError as exc:
            raise Unavailable(f"the ONNX export needs a package that is not installed: {exc}") from exc
        except Exception as exc:  # reported as this backend's failure; torch still runs
            raise PreparationFailed(f"the ONNX export of {self.source.path} failed: {_reason_of(exc)}") from exc
        return out




def _status_of(exc: BaseException) -> str:
    if isinstance(exc, (Unavailable, BackendUnavailableError, ImportError, InputError)):
        return "skipped"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "skipped"
    return "failed"


def _reason_of(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (Unavailable, PreparationFailed, ClippyError)):
        return first or type(exc).__name__
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of CUDA memory"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Runner:
    """Runs the planned cases of ``settings`` against ``source``; see the module doc."""

    def __init__(self, settings: BenchSettings, source: ModelSource, workdir: Path) -> None:
        self.settings = settings
        self.source = source
        self.workdir = workdir
        self.cases = plan_cases(settings, source.config, source.kind)
        # Precisions an ONNX export made during the run must hold, for backends serving ONNX graphs.
        serves_onnx = any(backend_record(name).artifact_kind == ONNX for name in settings.backends)
        onnx_precisions = list(settings.precisions) if serves_onnx else []
        extra = {}
        for name, kind in (("onnx_dir", ONNX), ("engine_dir", ENGINE)):
            path = getattr(settings, name)
            if path is not None:
                extra[name] = resolve_source(path, None, workdir)
                if extra[name].kind != kind:
                    raise ModelDirError(f"--{name.replace('_', '-')} {path} is a {extra[name].kind} directory, "
                                        f"not an {'ONNX' if kind == ONNX else 'engine'} directory")
        # The int8 graphs an export during the run writes: those of the backends asked for.
        int8_exports = ({backend_record(name).int8_export for name in settings.backends} - {None}
                        if "int8" in onnx_precisions else set())
        self._engines = _Engines(source, workdir, onnx_precisions, **extra, int8_exports=int8_exports)

    def run_case(self, case: Case) -> CaseResult:
        """Measure one case; never raises for a case that cannot run (KeyboardInterrupt aside)."""
        scope = reset_peak_memory(case.device if _cuda_usable(case.device) else None)
        try:
            fn, setup = self._build(case)
            measurement = measure(fn, self.settings.policy, device=case.device, setup=setup)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # every other error becomes this case's reported outcome
            return CaseResult(case, _status_of(exc), _reason_of(exc))
        finally:
            gc.collect()
        result = CaseResult(
            case, "ok",
            latency=summarize(measurement.host_ms),
            device_latency=summarize(measurement.device_ms) if measurement.device_ms else None,
            phases={name: summarize(values) for name, values in measurement.phases_ms.items()},
            phase_clock=measurement.phase_clock if measurement.phases_ms else None,
            warmup_iters=measurement.warmup_iters,
            elapsed_s=measurement.elapsed_s,
            peak_rss_bytes=peak_rss_bytes(),
            rss_scope=scope,
            peak_device_bytes=peak_device_bytes(case.device),
            flops=case_flops(case, self.source.config),
        )
        return result

    def _build(self, case: Case) -> Timed:
        if is_cuda(case.device) and not torch.cuda.is_available():
            raise Unavailable("CUDA is not available on this machine")
        if case.stage == "preprocess":
            return preprocess_case(case, self.source.config, self.settings)
        if case.stage == "seg-head":
            return seg_head_case(case, self.source.config, self.settings)
        if case.stage == "gemm":
            return gemm_case(case, self.source.config, self.settings, self.workdir)
        engine = self._engines.get(case.device, case.backend, case.precision)
        if case.stage == "image":
            return image_case(case, engine, self.settings)
        if case.stage == "text":
            return text_case(case, engine)
        if case.stage == "stream":
            return stream_case(case, engine, self.settings)
        return end_to_end_case(case, engine, self.settings)

    def close(self) -> None:
        self._engines.release()


def _cuda_usable(device: str) -> bool:
    return is_cuda(device) and torch.cuda.is_available()


def run_benchmark(settings: BenchSettings, *, wrap: Optional[Callable[[Sequence[Case]], Iterable[Case]]] = None,
                  environment: Optional[Dict[str, object]] = None) -> BenchRun:
    """Resolve the model, plan the matrix and run it. ``wrap`` wraps the case list (a
    progress bar). Ctrl-C stops the run and returns what finished (``interrupted``).

    Raises ModelDirError / InputError before anything runs for a bad path or setting.
    """
    from .environment import collect_environment

    started = _now()
    interrupted = False
    results: List[CaseResult] = []
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="clippy-rt-bench-") as tmp:
        source = resolve_source(settings.model, settings.arch, Path(tmp), seed=settings.seed)
        runner = Runner(settings, source, Path(tmp))
        cases = runner.cases
        try:
            if settings.threads is not None:
                torch.set_num_threads(settings.threads)
            env = environment if environment is not None else collect_environment()
            for case in (wrap(cases) if wrap is not None else cases):
                results.append(runner.run_case(case))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            runner.close()
            torch.set_num_threads(threads_before)
    return BenchRun(settings=settings, model=source.describe(settings.arch), environment=env,
                    results=tuple(results), planned=len(cases), interrupted=interrupted,
                    started=started, finished=_now())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
