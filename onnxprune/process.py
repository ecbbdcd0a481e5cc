"""Process-wide settings made when onnxprune is imported, each unless the user has set it already.

Reconstruction alternates numpy and onnxruntime on the same cores and allocates many short-lived arrays
of a few MB (feature rows, targets, activations of a batch); the defaults of two libraries suit that badly:

- OpenBLAS's threads busy-wait 2^28 cycles (about 0.1 s) after each call, slowing the onnxruntime run
  that follows; with 2^16 cycles they sleep at once. Read when numpy loads its BLAS, so this holds when
  onnxprune is imported first (the CLI).
- glibc's malloc raises its mmap threshold up to 32 MB as big blocks are freed; blocks under it then come
  from heaps that keep what is freed, and with blocks of many sizes the heaps only grow. A fixed 1 MB
  threshold returns every bigger block to the system when it is freed: `prune --data` on ResNet-50 with
  256 calibration images, in process, peaked at 920 MB resident instead of 1616 MB (with a fixed 32 MB
  threshold), for 10% more time (fresh blocks are page-faulted in).
"""

import ctypes
import os
import sys

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def configure() -> None:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # the C library already loaded
        except (OSError, AttributeError):  # not glibc (musl has no mallopt): its own policy stands
            pass
