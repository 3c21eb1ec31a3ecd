"""Argument types shared by the benchmark scripts' command lines.

Each is an argparse ``type=``: a value that is not a number of the required kind becomes
argparse's one-line error naming the flag (exit status 2), never a traceback and never a
silently different run (``--batch 0`` meaning "the paper's", ``--scan -3`` meaning 1, ...).

    p.add_argument("--steps", type=positive_int, default=5)

:func:`require_torch` is the PyTorch comparison scripts' ``import torch``: without PyTorch they
exit with one line saying how to install it, not a ``ModuleNotFoundError`` traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
from types import ModuleType

TORCH_INSTALL = "pip install torch==2.13.0"


def _bounded(kind: type, strict: bool, what: str):
    """An argparse type: ``kind(text)``, finite, and > 0 (``strict``) or >= 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value) or (value <= 0 if strict else value < 0):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    parse.__doc__ = what[0].upper() + what[1:] + "."
    return parse


positive_int = _bounded(int, True, "a positive integer")
nonnegative_int = _bounded(int, False, "an integer >= 0")
positive_float = _bounded(float, True, "a positive number")
nonnegative_float = _bounded(float, False, "a number >= 0")


def require_torch(script: str) -> ModuleType:
    """``import torch``, or exit (status 1) with one line naming ``script`` and the install command.

    Only a missing torch is turned into that line; a torch that is installed but fails to
    import (a broken wheel, a missing system library) keeps its own error.
    """
    try:
        import torch
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        raise _torch_missing(script) from None
    return torch


def check_torch_installed(script: str) -> None:
    """:func:`require_torch`'s exit where torch is not installed, without importing it: for
    scripts whose PyTorch side runs in a subprocess (importing torch here costs ~0.9 s)."""
    if importlib.util.find_spec("torch") is None:
        raise _torch_missing(script)


def _torch_missing(script: str) -> SystemExit:
    return SystemExit(f"{script}: this benchmark compares against PyTorch, which is not "
                      f"installed here; install it with: {TORCH_INSTALL}")
