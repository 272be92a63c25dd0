"""Video bundled with the package, so that the demo, tests and benchmarks run on a fresh clone
(attribution in SOURCES.md beside it)."""

from adaptcast.shared.resources import resource_path

BUNDLED_CLIP = resource_path("adaptcast.shared.data", "parking-aisle-10s.mp4")
"""10 s of a parking-lot camera; the bundled models were trained on the full clip."""
