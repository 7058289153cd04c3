"""Reports: JSON against the documented schema, CSV, the tables, and the speedup arithmetic."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from clippy_rt.bench.report import (CSV_FIELDS, JSON_SCHEMA, SCHEMA_VERSION, format_markdown, format_table,
                                    to_csv, to_json)
from clippy_rt.bench import BenchRun, BenchSettings, Case, CaseResult
from clippy_rt.bench.stats import summarize

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "benchmarks" / "BENCH_SCHEMA.md"
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value, schema, path="$"):
    """Errors of ``value`` against the subset of JSON Schema that JSON_SCHEMA uses."""
    errors = []
    if "anyOf" in schema:
        if all(schema_errors(value, option, path) for option in schema["anyOf"]):
            errors.append(f"{path}: matches no allowed form")
        return errors
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return errors + [f"{path}: expected {types}, got {type(value).__name__}"]
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{index}]")
    return errors


def _property_names(schema, found=None):
    found = set() if found is None else found
    if isinstance(schema, dict):
        for key, value in schema.get("properties", {}).items():
            found.add(key)
            _property_names(value, found)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                _property_names(schema[key], found)
        for option in schema.get("anyOf", []):
            _property_names(option, found)
    return found


def test_emitted_json_follows_the_schema(cpu_run):
    report = json.loads(json.dumps(to_json(cpu_run), allow_nan=False))
    assert schema_errors(report, JSON_SCHEMA) == []
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["completed"] == report["planned"] == len(report["results"])
    statuses = {entry["status"] for entry in report["results"]}
    assert "ok" in statuses and "skipped" in statuses


def test_schema_check_catches_a_broken_report(cpu_run):
    report = to_json(cpu_run)
    del report["results"][0]["status"]
    report["results"][1]["latency_ms"] = {"median": "fast"}
    report["environment"]["versions"]["torch"] = 2
    errors = schema_errors(report, JSON_SCHEMA)
    assert any("missing 'status'" in e for e in errors)
    assert any("results[1].latency_ms" in e for e in errors)
    assert any("versions.torch" in e for e in errors)


def test_every_schema_field_is_documented():
    doc = SCHEMA_DOC.read_text()
    documented = set(re.findall(r"`([a-z_0-9.]+)`", doc))
    missing = sorted(name for name in _property_names(JSON_SCHEMA) if name not in documented)
    assert missing == []


def test_csv_has_one_row_per_result_matching_the_json(cpu_run):
    rows = list(csv.DictReader(io.StringIO(to_csv(cpu_run))))
    report = to_json(cpu_run)
    assert len(rows) == len(report["results"])
    assert set(CSV_FIELDS) <= set(rows[0])
    for row, entry in zip(rows, report["results"]):
        assert (row["stage"], row["variant"], row["status"]) == (entry["stage"], entry["variant"], entry["status"])
        if entry["status"] == "ok":
            assert float(row["median_ms"]) == entry["latency_ms"]["median"]
            assert int(row["iterations"]) == entry["iterations"]
        else:
            assert row["median_ms"] == "" and row["reason"] == entry["reason"]
    assert any(name.startswith("phase_") for name in rows[0])


def _hand_made_run(samples_by_case, skipped=()):
    results = [CaseResult(case, "ok", latency=summarize(samples)) for case, samples in samples_by_case]
    results += [CaseResult(case, "skipped", reason) for case, reason in skipped]
    return BenchRun(settings=BenchSettings(arch="tiny"), model={"arch": "tiny", "kind": "model",
                                                                 "random_weights": True},
                    environment={"cpu": {"model": "test CPU"}, "versions": {"torch": "x"}},
                    results=tuple(results), planned=len(results) + 1, interrupted=True,
                    started="2000-01-01T00:00:00+00:00", finished="2000-01-01T00:00:01+00:00")


def test_speedup_is_baseline_median_over_median():
    base = Case("seg-head", "reference", "-", "fp32", "cpu", 1, 224, 21)
    fused = Case("seg-head", "torch", "-", "fp32", "cpu", 1, 224, 21)
    half = Case("seg-head", "torch", "-", "fp16", "cpu", 1, 224, 21)
    other_size = Case("seg-head", "torch", "-", "fp32", "cpu", 1, 448, 21)
    run = _hand_made_run([(base, [8.0, 8.0, 9.0]), (fused, [2.0, 2.0, 3.0]), (half, [4.0]),
                          (other_size, [5.0])],
                         skipped=[(Case("seg-head", "triton", "-", "fp32", "cpu", 1, 224, 21), "needs CUDA")])
    entries = {(e["variant"], e["precision"], e["size"]): e for e in to_json(run)["results"]}
    assert entries[("reference", "fp32", 224)]["speedup"] == 1.0
    assert entries[("torch", "fp32", 224)]["speedup"] == 4.0
    assert entries[("torch", "fp16", 224)]["speedup"] == 2.0
    assert entries[("torch", "fp32", 448)]["speedup"] is None  # its baseline did not run
    assert entries[("triton", "fp32", 224)]["speedup"] is None
    assert entries[("torch", "fp32", 224)]["throughput"] == pytest.approx(3 / (7.0 / 1000))

    table = format_table(run)
    assert "4.00x" in table and "base" in table
    assert "needs CUDA (1): seg-head triton - fp32 cpu B1 224px K21" in table
    assert "interrupted: 5 of 6 configurations finished" in table
    markdown = format_markdown(run)
    assert "| seg-head | torch | - | fp32 | cpu | 1 | 224 | 21 | 3 | 2.00 |" in markdown
    assert "4.00x" in markdown and "- needs CUDA: seg-head triton" in markdown


def test_table_lists_every_measured_row(cpu_run):
    table = format_table(cpu_run)
    measured = [r for r in cpu_run.results if r.status == "ok"]
    body = table.split("\n\n")[1].splitlines()[2:]
    assert len(body) == len(measured)
    assert "RANDOM weights" in table
