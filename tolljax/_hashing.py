"""SHA-256 of a set of named files: how a saved detector ties its checkpoint to its JSON
(:mod:`tolljax.detector`) and how a finished chunk of results names the code that computed it
(``experiments.run.code_sha256``)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping


def files_sha256(files: Mapping[str, Path]) -> str:
    """SHA-256 over ``files`` (name → path) in name order: each name, size and contents,
    framed so that no two different sets hash alike by moving bytes between files."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = Path(files[name]).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()
