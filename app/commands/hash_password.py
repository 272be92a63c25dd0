"""`adaptcast hash-password`: a viewer's password as the hash the receiver's `viewers:` takes.

The password comes from the terminal (asked twice) or from standard input, never from the
command line, where other users see it in the process list and the shell keeps it.
"""

from __future__ import annotations

import argparse
import sys

from adaptcast.commands import Command

MIN_PASSWORD_CHARS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: the password is never one."""


def run(args: argparse.Namespace) -> int:
    import getpass

    from adaptcast.shared.errors import UsageError
    from adaptcast.shared.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UsageError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    print(hash_password(password))
    return 0


COMMAND = Command("hash-password", "hash a viewer's password for the receiver's `viewers:` (reads it from the "
                                   "terminal or standard input)", add_arguments, run)
