"""Video bundled with the package, so that the demo, tests and benchmarks run on a fresh clone
(attribution in SOURCES.md beside it)."""

from pathlib import Path

BUNDLED_CLIP = Path(__file__).with_name("parking-aisle-10s.mp4")
"""10 s of a parking-lot camera; the bundled models were trained on the full clip."""
