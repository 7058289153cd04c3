"""Int8 towers for OpenVINO: NNCF post-training quantisation on calibration images and prompts.

``write_openvino_int8`` reads each float32 tower of an ONNX directory with OpenVINO,
quantises it with NNCF (``nncf.quantize``, transformer model type: weights int8 per output
channel, activations int8 per tensor with ranges measured on the calibration set, SmoothQuant
and bias correction; softmax, norms and GELU stay float) and saves OpenVINO's own format
(``image.int8.ov.xml`` + ``.bin``) beside the ONNX graphs. The manifest lists and hashes the
four files like every other graph file and records, under ``openvino_int8``, the method,
the versions, and the calibration set: its source, counts, and the sha256 of the exact
pixels and prompts used, so the same set reproduces the same graphs.

Calibration is static: the activation ranges come from the calibration set, so it should
look like the deployment images. ``clippy-rt export --openvino-int8`` uses generated scenes
(``clippy_rt.datasets.synthetic``, training seeds, never an evaluation seed) and their
captions unless ``--calibration DIR`` gives images.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from clippy_rt.config import ClippyConfig
from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.formats.io_spec import IMAGE, TEXT
from clippy_rt.formats.onnx_dir import openvino_int8_files


def _require_nncf():
    try:
        import nncf
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"OpenVINO int8 graphs need openvino and nncf ({exc}); install them with: "
                                      f"pip install 'clippy-rt[openvino]'") from exc
    return nncf, openvino


def calibration_feeds(config: ClippyConfig, tokenizer, images: Sequence, prompts: Sequence[str]
                      ) -> Tuple[List[Dict[str, np.ndarray]], List[Dict[str, np.ndarray]], str]:
    """(image feeds, text feeds, sha256 of both): one image (pre-processed as the engine
    does, squashed to the model's size) and one prompt per feed."""
    from clippy_rt.images import prepare

    if not images or not prompts:
        raise InputError("calibration needs at least one image and one prompt")
    size = config.image.image_size
    digest = hashlib.sha256()
    image_feeds = []
    for image in images:
        pixels = prepare(image, size, mean=config.image.mean, std=config.image.std,
                         patch_size=config.image.patch_size).pixels.numpy()[None]
        digest.update(np.ascontiguousarray(pixels, np.float32).tobytes())
        image_feeds.append({IMAGE.input_names[0]: pixels})
    text_feeds = []
    for prompt in prompts:
        ids, mask = tokenizer.encode([prompt])
        digest.update(prompt.encode("utf-8") + b"\0")
        text_feeds.append(dict(zip(TEXT.input_names, (ids.numpy(), mask.numpy()))))
    return image_feeds, text_feeds, digest.hexdigest()


def quantize_openvino(source: Path, target: Path, feeds: Sequence[Dict[str, np.ndarray]]) -> Dict[str, object]:
    """Quantise the float32 ONNX graph ``source`` with NNCF on ``feeds``; save OpenVINO's
    format at ``target`` (.xml, weights in the .bin beside it). Returns the manifest record."""
    nncf, ov = _require_nncf()
    model = ov.Core().read_model(str(source))
    logging.getLogger("nncf").setLevel(logging.ERROR)
    # NNCF draws its progress bars on stdout; a command's stdout is its result (a table, JSON).
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(feeds))
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    fake_quantize = sum(1 for op in quantized.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    if fake_quantize == 0:
        raise InputError(f"{source}: NNCF quantised nothing")
    return {"fake_quantize_nodes": fake_quantize}


def write_openvino_int8(directory: Path, config: ClippyConfig, tokenizer, images: Sequence, prompts: Sequence[str],
                        source: str) -> Tuple[Dict[str, Dict[str, object]], Dict[str, object]]:
    """Quantise ``image.onnx`` and ``text.onnx`` of ``directory`` for OpenVINO on the
    calibration ``images`` (anything ``clippy_rt.images`` reads) and ``prompts``. ``source``
    says where they came from. Returns (the manifest's ``files`` entries for the new files,
    without sizes and checksums; the manifest's ``openvino_int8`` entry)."""
    nncf, ov = _require_nncf()
    image_feeds, text_feeds, digest = calibration_feeds(config, tokenizer, images, prompts)
    files: Dict[str, Dict[str, object]] = {}
    records: Dict[str, Dict[str, object]] = {}
    for graph, feeds in ((IMAGE, image_feeds), (TEXT, text_feeds)):
        xml, weights = openvino_int8_files(graph.name)
        records[graph.name] = quantize_openvino(directory / graph.filename("fp32"), directory / xml, feeds)
        for name in (xml, weights):
            files[name] = {"graph": graph.name, "precision": "int8", "runtime": "openvino"}
    entry = {
        "precision": "int8",
        "method": "nncf post-training quantization (transformer preset), OpenVINO format",
        "files": {graph.name: openvino_int8_files(graph.name)[0] for graph in (IMAGE, TEXT)},
        "calibration": {"source": source, "images": len(image_feeds), "prompts": len(text_feeds),
                        "image_size": config.image.image_size, "sha256": digest},
        "graphs": records,
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
    }
    return files, entry
