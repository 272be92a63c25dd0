"""Output files written whole or not at all.

Encoding, decoding and exporting take seconds to hours: where the output cannot be written is
checked before that work starts (`check_writable`), and the output is written under a temporary
name beside it and renamed when it is complete (`written_whole`), so that a failure, Ctrl-C
included, leaves no partial file that looks like a result.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adaptcast.shared.errors import PathError


def check_writable(path: str | Path) -> Path:
    """`path` as a Path when a file can be created there; PathError saying why not otherwise."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise PathError(f"output {path} is a folder: name a file in it")
    if not folder.exists():
        raise PathError(f"output {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise PathError(f"output {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PathError(f"output {path}: no permission to write in {folder}")
    return path


@contextmanager
def written_whole(path: str | Path, keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """A temporary path beside `path` to write the output to; renamed to `path` when the block
    ends without an error or with one of `keep_on` (an error after which what was written is
    worth keeping, said in its message), removed otherwise.

    The temporary name keeps the suffix, which picks the container a video is written in, and
    the writer creates the file, with the permissions any file of the user gets.
    """
    path = check_writable(path)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield partial
    except keep_on:
        if partial.exists():  # the error may come before anything was written
            partial.replace(path)
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
