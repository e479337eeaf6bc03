"""The process's memory: handing what start-up loading freed back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_freed_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():  # -> the C function, or None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``). Loading the notes engine and
    warming the notes builders frees some megabytes of temporary buffers that glibc otherwise keeps mapped.
    True when glibc released something; False when it had nothing to release or is not the C library."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
