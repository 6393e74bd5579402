"""Fixed glibc malloc thresholds for the processes of ours that run the model.

glibc's malloc moves its mmap threshold with the sizes a program frees (up to 32 MiB) and
hands the top of a heap back to the kernel once more than twice that threshold is free
there. A segmentation run frees megabyte buffers on several threads all the time (the
network's activations, decoded blocks, chunks being compressed), so the same memory went
back to the kernel and was faulted in again, zeroed, for the next batch: with the
``small`` preset 1,759 minor page faults per patch, a tenth of the process's CPU time in
the kernel. Fixing the thresholds (which also turns glibc's adjustment off) keeps freed
memory for reuse: 25 faults per patch, end to end 1.15× and the model alone 1.12× as
fast on 2 CPU cores, for 5 % more peak memory (swin-t: 0.99–1.10× and 1.08×, 9 %;
``benchmarks/malloc_thresholds.py``, docs/benchmarks.md).

Only the executables call :func:`pin_malloc_thresholds` (the ``wsi-seg`` CLI, local dask
workers, the benchmarks), never the library on import: a napari session or a user's
script is another program, whose allocator is not ours to set. Settings a user gave
through glibc's own ``MALLOC_*_`` variables or ``GLIBC_TUNABLES`` are left as they are,
and ``WSI_SEG_MALLOC=default`` keeps glibc's moving thresholds.
"""

from __future__ import annotations

import os
import threading

MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for the moving threshold
TRIM_THRESHOLD_BYTES = 1 << 30  # free memory a heap keeps at its top before trimming

# mallopt parameters (malloc.h); setting either fixes both in place of the moving ones
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# how a user sets them without us: glibc's variables, or its malloc tunables
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
OFF_VARIABLE = "WSI_SEG_MALLOC"

_lock = threading.Lock()
_state = "glibc default"


def pin_malloc_thresholds() -> str:
    """Fix malloc's mmap and trim thresholds of this process, once; returns the state
    :func:`malloc_state` reports from then on."""
    global _state
    with _lock:
        if _state == "glibc default":
            _state = _pin()
        return _state


def malloc_state() -> str:
    """How this process's malloc thresholds are set, for a result's provenance."""
    return _state


def is_glibc() -> bool:
    """Whether this process's C library (and so its malloc) is glibc."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system with glibc
        return False


def _pin() -> str:
    user = [name for name in USER_VARIABLES
            if name in os.environ and (name != "GLIBC_TUNABLES" or "glibc.malloc." in os.environ[name])]
    if user:
        return f"set by the user ({', '.join(user)})"
    if os.environ.get(OFF_VARIABLE) == "default":
        return f"glibc default ({OFF_VARIABLE}=default)"
    if not is_glibc():
        return "not glibc: left as it is"
    import ctypes  # here, not at the top: `wsi-seg --help` stays quick

    try:
        libc = ctypes.CDLL(None)  # the symbols the process has loaded: glibc's mallopt
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "glibc mallopt refused: left as it is"
    return f"pinned: mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB"
