"""The project's named exceptions. Messages say what to do next."""

__all__ = [
    "ErcError",
    "ConfigError",
    "DataNotFoundError",
    "ArtifactError",
    "PromptTooLongError",
    "AnchorSourceError",
    "BrokerError",
]


class ErcError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(ErcError, ValueError):
    """A setting has a bad value; the message names the field and the value."""


class DataNotFoundError(ErcError, FileNotFoundError):
    """A dataset file or folder is missing; the message says where to get it."""


class ArtifactError(ErcError):
    """A model version is missing, incomplete, tampered with or incompatible."""


class PromptTooLongError(ErcError, ValueError):
    """The current utterance plus the prompt do not fit in max_length tokens."""


class AnchorSourceError(ErcError):
    """Emotion-anchor descriptions could not be obtained (no LLM, no cache, bad file)."""


class BrokerError(ErcError):
    """The Kafka broker cannot be reached, refused us, or the local broker failed to start."""
