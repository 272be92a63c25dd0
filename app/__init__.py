"""adaptcast: stream surveillance cameras with an instance-adaptive neural video codec.

The installed package holds the parts the repository keeps in folders of their own:
`adaptcast.shared` (the codec, adapters and wire format both ends use), `adaptcast.sender`,
`adaptcast.receiver`, and here the command line and the demo. Importing it does nothing else.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adaptcast")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
