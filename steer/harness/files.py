"""Atomic file writes: a reader (or a resumed run) sees a whole file or none, never a torn one."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name never ends in .png/.json, so globbing readers (GenEval's evaluator) skip it
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=indent, default=_plain) + "\n").encode())


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def save_image(path: str | Path, image) -> Path:
    """Save a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _plain(obj):
    """JSON fallback: numpy scalars/arrays, tensors, paths, anything else by repr."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
