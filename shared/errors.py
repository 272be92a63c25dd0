"""Typed errors: each becomes one clear line and a non-zero exit at the command line."""


class AdaptcastError(Exception):
    """Base of every error that reaches a user as one line."""


class VideoError(AdaptcastError):
    """A video input or output cannot be opened, read or written."""


class ModelError(AdaptcastError):
    """A base model file is missing, malformed, or not the one a stream was coded with."""


class BitstreamError(AdaptcastError):
    """A coded stream is truncated, corrupted, or of an unknown format or version."""


class ConfigError(AdaptcastError):
    """A daemon's configuration file is unreadable or has bad keys; the message names each one."""


class PathError(AdaptcastError):
    """A file or folder named as input does not exist, or an output cannot be written where it is named."""


class UsageError(AdaptcastError):
    """Command-line arguments that parse one by one but are refused: out of range, or not going together."""
