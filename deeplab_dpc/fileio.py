"""Atomic file writes: a temporary sibling, then ``os.replace``.

A reader (another process, a rerun after a crash) sees either the old file or
the whole new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Iterator


def temporary_sibling(path: str, tag: str = "tmp", suffix: str = "") -> str:
    """A hidden, unique name beside ``path`` (``.<name>.<tag>-<pid>-<ns><suffix>``).

    ``suffix`` keeps an ending that a writer insists on (``.png`` for OpenCV,
    ``.weights.h5`` for Keras).
    """
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{time.time_ns()}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary sibling to write; renames it to ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is untouched.
    ``suffix``: as for ``temporary_sibling``.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_sibling(path, suffix=suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """Writes ``obj`` as JSON (plus a final newline) atomically."""
    write_bytes_atomically(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))
