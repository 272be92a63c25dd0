"""How the receiver hands access units to its RTSP child (receiver/rtsp.py to receiver/rtsp_child.py):
each as HEADER, then its bytes. Standard library only: the child runs under another Python."""

from __future__ import annotations

import struct

HEADER = struct.Struct("<HBI")
"""The camera's index in the child's settings, flags (KEYFRAME), the access unit's length."""
KEYFRAME = 1
MAX_ACCESS_UNIT = 16 << 20
"""A header that claims more is a broken pipe, not a picture."""
