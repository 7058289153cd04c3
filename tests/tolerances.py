"""The suite's one dtype -> tolerance table (for torch.testing.assert_close).

Reduced-precision tolerances are a few times the largest error measured by
``python tools/measure_tolerances.py`` (tiny random model, every shape the backend tests
use; all compared outputs are L2-normalised embeddings, so absolute error is what counts):

    torch float16 engine   1.04e-3      onnxruntime float16 graphs   4.4e-4
    torch bfloat16 engine  6.4e-3       onnxruntime float32 graphs   3.3e-7

float32 keeps 1e-4: it also covers the B/16 towers against timm and transformers, whose
accumulated rounding over 12 layers of width 768 is larger than the tiny model's.
"""

import torch

# Largest measured error per dtype (see above); a test checks the table keeps its margin.
MEASURED_MAX_ABS = {
    torch.float32: 3.3e-7,
    torch.float16: 1.04e-3,
    torch.bfloat16: 6.4e-3,
}

TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    # 4x the torch float16 figure (9x the ONNX float16 graphs').
    torch.float16: dict(atol=4e-3, rtol=0),
    # 4x the torch bfloat16 figure.
    torch.bfloat16: dict(atol=2.5e-2, rtol=0),
}
