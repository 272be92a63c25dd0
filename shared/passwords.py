"""Viewer passwords as self-describing scrypt hashes (the PHC string format), stdlib only.

    $scrypt$ln=15,r=8,p=1$<salt>$<key>        (salt and key in base64 without padding)

The cost parameters travel in the string, so a hash made today still verifies after the
defaults grow, and the configuration check (`parse_password_hash`) can refuse at start-up a
hash that is malformed, too weak or so costly that checking one password would exhaust the
receiver's memory. Only the hash lives in the receiver's configuration; `adaptcast
hash-password` makes one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

LOG2_N, R, P = 15, 8, 1
"""Default cost: N = 2**15, r = 8 (32 MiB and about 0.1 s a check on one core)."""
SALT_BYTES, KEY_BYTES = 16, 32
MIN_LOG2_N, MAX_LOG2_N = 14, 20
MAX_MEMORY_BYTES = 256 * 1024**2
FAILURE_WINDOW_SECONDS = 300.0
MAX_FAILURES = 10
"""Failed logins an address may make in FAILURE_WINDOW_SECONDS before it is refused unchecked: the
live view's gate and the RTSP server apply the same lockout."""
"""A hash whose check would need more than this is refused: the string comes from a file an
operator edits, and scrypt's memory is 128 * r * N bytes."""
_FORMAT = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


@dataclass(frozen=True)
class PasswordHash:
    """A parsed hash: scrypt's cost parameters, the salt and the derived key."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @property
    def memory_bytes(self) -> int:
        return 128 * self.r * (1 << self.log2_n)

    def derive(self, password: str) -> bytes:
        """The key `password` derives with this hash's salt and cost."""
        return hashlib.scrypt(password.encode(), salt=self.salt, n=1 << self.log2_n, r=self.r, p=self.p,
                              maxmem=2 * self.memory_bytes, dklen=len(self.key))

    def __str__(self) -> str:
        return f"$scrypt$ln={self.log2_n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse_password_hash(text: str) -> PasswordHash:
    """`text` as a PasswordHash; ValueError saying what is wrong (never echoing the hash)."""
    match = _FORMAT.fullmatch(text)
    if match is None:
        raise ValueError("expected a hash from `adaptcast hash-password`, like $scrypt$ln=15,r=8,p=1$SALT$KEY")
    log2_n, r, p = (int(match[i]) for i in (1, 2, 3))
    try:
        salt, key = _unb64(match[4]), _unb64(match[5])
    except binascii.Error:
        raise ValueError("the salt or key of the hash is not base64") from None
    parsed = PasswordHash(log2_n, r, p, salt, key)
    if not MIN_LOG2_N <= log2_n <= MAX_LOG2_N or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"scrypt cost out of range: ln must be {MIN_LOG2_N}..{MAX_LOG2_N}, r 1..32, p 1..16")
    if parsed.memory_bytes > MAX_MEMORY_BYTES:
        raise ValueError(f"scrypt cost needs {parsed.memory_bytes >> 20} MiB a check, more than "
                         f"{MAX_MEMORY_BYTES >> 20} MiB")
    if len(salt) < 16 or not 16 <= len(key) <= 64:
        raise ValueError("the salt must have at least 16 bytes and the key 16 to 64")
    return parsed


def hash_password(password: str, log2_n: int = LOG2_N) -> str:
    """A new hash of `password` with a random salt, as the configuration's `password_hash` takes it."""
    salt = secrets.token_bytes(SALT_BYTES)
    draft = PasswordHash(log2_n, R, P, salt, bytes(KEY_BYTES))
    return str(PasswordHash(log2_n, R, P, salt, draft.derive(password)))


def verify_password(password: str, password_hash: PasswordHash) -> bool:
    """Whether `password` matches, compared in constant time. Costs one scrypt: run it off the event loop."""
    return hmac.compare_digest(password_hash.derive(password), password_hash.key)
