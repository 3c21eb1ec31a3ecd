"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or not).

IDX layout (big-endian): two zero bytes, an element-type byte (0x08 = unsigned byte), a byte
with the number of dimensions, one uint32 per dimension, then the data in C order. MNIST uses
magic 0x00000803 for images (N × 28 × 28) and 0x00000801 for labels (N).
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from tolljax.data.split import unreadable
from tolljax.errors import TollError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


def idx_file_names(split: str, kind: str) -> list[str]:
    """File names tried for one IDX file, e.g. ``split="train", kind="images"``.

    Both common spellings, each gzipped or not: ``train-images-idx3-ubyte[.gz]`` (the original
    distribution) and ``train-images.idx3-ubyte[.gz]`` (some mirrors and unpacked copies).
    ``split`` is ``"train"`` or ``"t10k"``; ``kind`` is ``"images"`` or ``"labels"``.
    """
    rank = 3 if kind == "images" else 1
    names = []
    for stem in (f"{split}-{kind}-idx{rank}-ubyte", f"{split}-{kind}.idx{rank}-ubyte"):
        names += [stem + ".gz", stem]
    return names


def read_bytes(path: Path) -> bytes:
    """Contents of ``path``, decompressed when it is gzip data (detected by its magic bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise TollError(f"{path} is a damaged or truncated gzip file ({type(exc).__name__}: "
                        f"{exc}); download it again") from None


def parse_idx(buf: bytes, *, magic: int, source: str | Path = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a read-only uint8 array, checking magic number and size.

    ``magic``: the expected magic number (:data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`).
    The array is a view on ``buf`` (no copy).
    """
    what = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    if len(buf) < 4:
        raise TollError(f"{source} holds only {len(buf)} bytes, too short for an IDX header; the "
                        f"file is truncated or not an IDX {what} file, download it again")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        raise TollError(f"{source}: IDX magic number 0x{found:08X}, expected 0x{magic:08X} "
                        f"({what}); the file is corrupt or not an IDX {what} file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise TollError(f"{source} is truncated inside its IDX header ({len(buf)} bytes); "
                        "download it again")
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python ints: an int64 product could wrap
    if len(buf) - header != expected:
        state = "truncated" if len(buf) - header < expected else "longer than its header says"
        raise TollError(f"{source} is {state}: the header declares shape "
                        f"{'x'.join(map(str, dims))} = {expected} bytes of data, the file holds "
                        f"{len(buf) - header}; download it again")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | Path, *, magic: int) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a read-only uint8 array; see :func:`parse_idx`."""
    path = Path(path)
    return parse_idx(read_bytes(path), magic=magic, source=path)
