"""Upper bounds on sizes a config, an image or an input may ask for.

They are far above any CLIPpy model or camera frame and far below what would exhaust
memory or hang: a mistyped config or a hostile file gets a one-line error instead of a
``MemoryError`` traceback or an hour of allocation.
"""

# Transformer blocks per tower (ViT-g has 40, T5-XXL 24).
MAX_DEPTH = 256
# Widths: ViT width, MLP width, T5 d_model, d_ff, heads x d_kv, projection.
MAX_WIDTH = 65536
MAX_HEADS = 1024
MAX_VOCAB = 1 << 21
MAX_TEXT_LENGTH = 8192
MAX_RELATIVE_BUCKETS = 4096
# Parameters the two towers may hold together (16 GB in float32).
MAX_PARAMETERS = 4_000_000_000
# Side of the model input in pixels, and patches in one input (a 2048 x 2048 input at /16).
MAX_INPUT_SIDE = 4096
MAX_INPUT_PATCHES = 16384
# Pixels of one decoded image (8192 x 8192; a 48-megapixel photo passes).
MAX_IMAGE_PIXELS = 8192 * 8192
