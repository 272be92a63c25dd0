"""Credentials kept out of log lines.

An RTSP camera's URL often carries its login (rtsp://user:password@host/...), and FFmpeg
repeats the URL in its errors; logs are read by more people, and kept longer, than the
configuration file and the environment that hold the secrets.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
"""The user:password@ of a URL: up to the last @ before the path (FFmpeg takes a password with
an unescaped @ in it)."""


def redact_url(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by `***`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)
