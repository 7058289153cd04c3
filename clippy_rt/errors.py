"""Project exceptions. Each derives from ``ClippyError`` and from the builtin it refines,
so callers may catch either."""


class ClippyError(Exception):
    """Base class of every error clippy-rt raises on purpose."""


class ConfigError(ClippyError, ValueError):
    """A configuration is invalid or does not match the weights."""


class CheckpointError(ClippyError, ValueError):
    """A checkpoint or weight file is missing, corrupt, or has the wrong keys or shapes."""


class ModelDirError(ClippyError, ValueError):
    """A model, ONNX or engine directory is missing files or is inconsistent."""


class InputError(ClippyError, ValueError):
    """Bad user input: an unreadable image, a wrong shape, an empty prompt list."""


class BackendUnavailableError(ClippyError, RuntimeError):
    """A requested backend or device cannot run here (missing package, no GPU)."""


class ServerError(ClippyError, RuntimeError):
    """A server could not be reached, or failed on a request it accepted (HTTP 5xx)."""


class NumericsError(ClippyError, ArithmeticError):
    """A computation produced NaN or infinity (corrupt weights or input, or an overflow)."""
