"""Process-wide settings made when onnxprune is imported, each unless the user has set it already.

Reconstruction alternates numpy and onnxruntime on the same cores and allocates many short-lived arrays
of a few MB (feature rows, targets, activations of a batch); the defaults of two libraries suit that badly:

- OpenBLAS's threads busy-wait 2^28 cycles (about 0.1 s) after each call, slowing the onnxruntime run
  that follows; with 2^16 cycles they sleep at once. Read when numpy loads its BLAS, so this holds when
  onnxprune is imported first (the CLI).
- glibc's malloc raises its mmap threshold up to 32 MB as big blocks are freed, and heaps keep what is
  freed below it. Either extreme costs: blocks of a few MB from heaps that only grow (a fixed 32 MB
  threshold without trimming: `prune --data` on ResNet-50 with 256 calibration images, in process,
  peaked at 1616 MB), or every block over 1 MB mapped fresh and page-faulted in each time (a fixed 1 MB
  threshold: onnxruntime's per-batch tensors of a staged run, 19 MB each for ResNet-50 at 6 images a
  batch, cost twice the time of the run itself). So the threshold is fixed at 32 MB (a batch's tensors
  are reused from the heap), and `release_memory` gives the heaps' free pages back where a phase ends
  (a stage of a staged run, a group's greedy removal, a layer's solve). Same run: 211 s and 988 MB peak,
  against 263 s and 838 MB with a fixed 1 MB threshold.
"""

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def configure() -> None:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # the C library already loaded
        except (OSError, AttributeError):  # not glibc (musl has no mallopt): its own policy stands
            pass


def release_memory() -> None:
    """Give the free pages of malloc's heaps back to the system (glibc's malloc_trim; elsewhere nothing):
    called where a phase of work ends, so that what it freed does not count in the next phase's peak."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass
