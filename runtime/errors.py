"""The exceptions the runtime raises. Each message is one line a user can act on."""


class DgemmaError(Exception):
    """Base class: anything the CLI may show as a one-line error."""


class UnsupportedModelError(DgemmaError):
    """The folder holds a model that is not DiffusionGemma (or a variant we cannot run)."""


class CheckpointError(DgemmaError):
    """The checkpoint is missing, truncated, or its tensors do not match the config."""


class InsufficientMemoryError(DgemmaError):
    """The model's weights would not fit in the memory free on the target device."""


class ContextFullError(DgemmaError):
    """The conversation no longer fits the KV cache that was allocated for it."""


class OptionError(DgemmaError, ValueError):
    """A generation option is out of range."""


class NonFiniteError(DgemmaError):
    """The model computed NaN or infinite logits: corrupt weights, or activations that overflow the dtype."""
