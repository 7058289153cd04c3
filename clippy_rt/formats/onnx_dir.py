"""The ONNX directory written by ``clippy-rt export``: graph files plus ``manifest.json``.

Layout (tensor names and shapes come from ``io_spec``)::

    config.json       the model config (as in the model directory)
    spiece.model      (or tokenizer.json) the tokenizer
    image.onnx        pixel_values -> patch_features, image_embeds      (float32)
    text.onnx         input_ids, attention_mask -> text_embeds           (float32)
    image.fp16.onnx   the same graphs in float16 (exported with ``--fp16``)
    text.fp16.onnx
    seg_head.onnx     patch_features, text_embeds, grid and output size -> labels, scores
    image.int8.ov.xml OpenVINO int8 graphs (NNCF post-training quantisation on calibration
    image.int8.ov.bin images and prompts; exported with ``--openvino-int8``), recorded under
    text.int8.ov.xml  the manifest's ``openvino_int8`` entry
    text.int8.ov.bin
    manifest.json     config, tensor names and shapes, file sizes and sha256, the sha256 of
                      the source weights, opset, precisions, tool versions, logit scale and
                      the parity table measured at export

The exporter (``clippy_rt.export.onnx``) writes it; the runtimes read it with
``read_onnx_dir`` and never import the exporter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from ..config import ClippyConfig
from ..errors import ConfigError, ModelDirError
from .io_spec import GRAPH_PRECISIONS, GRAPHS, TOWERS
from .model_dir import CONFIG_FILE, WEIGHTS_FILE

FORMAT = "clippy-rt-onnx"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# The manifest entry recording the OpenVINO int8 graphs and their calibration.
OPENVINO_INT8 = "openvino_int8"
# Kept under its old name: the precisions an ONNX directory may hold.
PRECISIONS = GRAPH_PRECISIONS


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class OnnxDir:
    """A checked ONNX directory: its manifest, config, tokenizer and graph files."""

    path: Path
    manifest: Dict[str, object]
    config: ClippyConfig
    tokenizer: Path
    logit_scale: float

    @property
    def precisions(self) -> Tuple[str, ...]:
        return tuple(self.manifest["precisions"])

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        return self.path / GRAPHS[name].filename(precision)

    def openvino_int8_path(self, name: str) -> Optional[Path]:
        """The OpenVINO int8 graph (``.xml``; its weights are the ``.bin`` beside it) of
        tower ``name``, or None when the directory was exported without them."""
        entry = self.manifest.get(OPENVINO_INT8)
        if not isinstance(entry, dict):
            return None
        return self.path / entry["files"][name]


def openvino_int8_files(name: str) -> Tuple[str, str]:
    """The file names of tower ``name``'s OpenVINO int8 graph: (``.xml``, ``.bin``)."""
    return f"{name}.int8.ov.xml", f"{name}.int8.ov.bin"



def read_onnx_dir(path: Path, *, verify_checksums: bool = True) -> OnnxDir:
    """Read and check an ONNX directory written by ``export_onnx``.

    Checks that the manifest is valid JSON of this format, that its config equals
    ``config.json``, that the tokenizer and every listed graph file are present with the
    recorded size and (with ``verify_checksums``) sha256, and that the declared tensors are
    the I/O spec's. Raises ``ModelDirError`` naming the file and the mismatch.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"ONNX directory not found: {path}")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        hint = (" (it is a model directory: export it first with `clippy-rt export`)"
                if (path / WEIGHTS_FILE).is_file() else "")
        raise ModelDirError(f"{path} has no {MANIFEST_FILE}: not an ONNX directory{hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelDirError(f"{manifest_path} is not a clippy-rt ONNX manifest (format "
                            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{manifest_path} has format_version {manifest.get('format_version')!r}; this "
                            f"clippy-rt reads version {FORMAT_VERSION}: re-export the model")
    for key in ("config", "precisions", "files", "graphs", "tokenizer", "logit_scale"):
        if key not in manifest:
            raise ModelDirError(f"{manifest_path} lacks the {key!r} entry")
    try:
        config = ClippyConfig.from_dict(manifest["config"])
    except ConfigError as exc:
        raise ModelDirError(f"{manifest_path}: invalid config: {exc}") from None
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ModelDirError(f"{path} has no {CONFIG_FILE}")
    if ClippyConfig.load(config_path) != config:
        raise ModelDirError(f"{config_path} does not match the config in {MANIFEST_FILE}: the directory was "
                            f"edited after export; re-export it")
    tokenizer = _listed_file(path, manifest["tokenizer"], manifest_path)
    if not tokenizer.is_file():
        raise ModelDirError(f"{path} has no tokenizer file {manifest['tokenizer']!r} (listed in {MANIFEST_FILE})")
    if not isinstance(manifest["files"], dict) or not all(isinstance(e, dict) for e in manifest["files"].values()):
        raise ModelDirError(f"{manifest_path}: 'files' must map file names to {{bytes, sha256}} entries")
    if not isinstance(manifest["graphs"], dict) or not isinstance(manifest["precisions"], list):
        raise ModelDirError(f"{manifest_path}: malformed 'graphs' or 'precisions' entry")
    for precision in manifest["precisions"]:
        if precision not in PRECISIONS:
            raise ModelDirError(f"{manifest_path}: unknown precision {precision!r}")
        for graph in TOWERS:
            if graph.filename(precision) not in manifest["files"]:
                raise ModelDirError(f"{manifest_path} lists precision {precision} but no "
                                    f"{graph.filename(precision)}")
    for name, graph in GRAPHS.items():
        declared = manifest["graphs"].get(name)
        if declared is not None and declared != graph.describe(config):
            raise ModelDirError(f"{manifest_path}: the {name} graph's tensors {declared} do not match this "
                                f"clippy-rt's I/O spec {graph.describe(config)}; re-export the model")
    if OPENVINO_INT8 in manifest:
        _check_openvino_int8(manifest, manifest_path)
    for filename, entry in manifest["files"].items():
        check_file(_listed_file(path, filename, manifest_path), entry, verify_checksums)
    return OnnxDir(path=path, manifest=manifest, config=config, tokenizer=tokenizer,
                   logit_scale=float(manifest["logit_scale"]))


def _check_openvino_int8(manifest: Dict[str, object], manifest_path: Path) -> None:
    """The ``openvino_int8`` entry names, for each tower, a graph whose two files are listed
    (and so hashed) in ``files``."""
    entry = manifest[OPENVINO_INT8]
    graphs = entry.get("files") if isinstance(entry, dict) else None
    if not isinstance(graphs, dict):
        raise ModelDirError(f"{manifest_path}: malformed {OPENVINO_INT8!r} entry")
    for graph in TOWERS:
        for filename in openvino_int8_files(graph.name):
            if filename not in manifest["files"]:
                raise ModelDirError(f"{manifest_path} records OpenVINO int8 graphs but does not list {filename}")
        if graphs.get(graph.name) != openvino_int8_files(graph.name)[0]:
            raise ModelDirError(f"{manifest_path}: {OPENVINO_INT8!r} names {graphs.get(graph.name)!r} for the "
                                f"{graph.name} graph, not {openvino_int8_files(graph.name)[0]}")


def _listed_file(folder: Path, name: object, manifest_path: Path) -> Path:
    """``folder / name`` for a file the manifest lists; the name must be a plain file name
    and the file no symbolic link, so nothing outside the directory is ever read."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or name != Path(name).name):
        raise ModelDirError(f"{manifest_path} lists {name!r}: file names must be plain names of files in "
                            f"the directory")
    if (folder / name).is_symlink():
        raise ModelDirError(f"{folder / name} is a symbolic link; the files of an ONNX directory must be "
                            f"inside it")
    return folder / name


def check_file(file: Path, entry: Mapping[str, object], verify_checksum: bool,
               listed_in: str = MANIFEST_FILE) -> None:
    """``file`` must exist with the recorded size and (optionally) sha256."""
    if not file.is_file():
        raise ModelDirError(f"{file} is missing (listed in {listed_in})")
    size = file.stat().st_size
    if size != entry.get("bytes"):
        raise ModelDirError(f"{file} has {size} bytes but {listed_in} records {entry.get('bytes')}: "
                            f"the file is truncated or was replaced; rebuild the directory")
    if verify_checksum and sha256_file(file) != entry.get("sha256"):
        raise ModelDirError(f"{file} does not match its sha256 in {listed_in}: the file is corrupt or "
                            f"was replaced; rebuild the directory")

