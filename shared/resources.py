"""Files installed with the package (models, the demo clip, the live view's pages), found through
importlib.resources rather than by paths relative to the source tree, so that they are found the
same way in a checkout, an editable install and site-packages."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from adaptcast.shared.errors import AdaptcastError


def resource_path(package: str, name: str) -> Path:
    """`name` inside `package` as a path on disk. The readers of these files (PyAV, safetensors,
    aiohttp's FileResponse, another Python) need real paths, and pip always installs unpacked;
    an install that is not (a zip) fails here with a clear error rather than later."""
    resource = files(package).joinpath(name)
    if not isinstance(resource, Path):
        raise AdaptcastError(f"{package}/{name} is not a file on disk ({resource!r}): install adaptcast unpacked")
    return resource
