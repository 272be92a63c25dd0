"""The model used when none is named, in a module of its own: reading a configuration file needs
it, and must not import CompressAI and torch for it."""

DEFAULT_MODEL = "ssf-small-vr"
"""The bundled variable-rate model (docs/models.md)."""
