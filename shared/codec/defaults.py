"""Defaults that reading a configuration file needs, in a module of their own: it must not
import CompressAI and torch for them."""

DEFAULT_MODEL = "ssf-small-vr"
"""The bundled variable-rate model (docs/models.md)."""
DEFAULT_FIT_STEPS = 20
"""Optimisation steps when fitting a segment's adapter: what a small CPU fits within a 2 s segment."""
