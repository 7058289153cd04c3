"""The model directory; its code lives in ``clippy_rt.formats.model_dir`` (names kept here)."""

from .formats.atomic import atomic_directory, remove_abandoned_staging  # noqa: F401
from .formats.model_dir import (CONFIG_FILE, TOKENIZER_FILES, WEIGHTS_FILE, ModelDir,  # noqa: F401
                                build_model, check_state_dict, find_tokenizer, load_model, load_weights,
                                read_model_dir, save_model_dir)
