"""The few errors the library raises. The CLI turns each into one line on stderr and a non-zero exit."""


class AsrError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidOptionError(AsrError, ValueError):
    """A user-supplied option is out of range or conflicts with another; the message lists what is allowed."""


class AudioLoadError(AsrError, ValueError):
    """An audio input cannot be used: missing, not audio, truncated, empty, non-finite, or too long.

    The message starts with the input's name so a batch report can show it as is.
    """


class ModelNotFoundError(AsrError):
    """A model name is not bundled, not a local directory, and not available from the Hugging Face cache."""


class WeightsIntegrityError(AsrError):
    """A bundled weight file does not match its published sha256 (corrupt or tampered install)."""


class IncompatibleModelsError(AsrError, ValueError):
    """A draft model cannot serve a target (different tokenizer or vocabulary)."""
