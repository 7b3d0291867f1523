"""Shared pieces of the compiled CPU kernels: clamp constants, the gamma loss's offset and compiled derivative,
numba's thread count and the lock that serialises parallel kernels across Python threads.

The constants are the reference's clamps, defined once here and used by the kernels and their autograd twin
(:mod:`sparsega.alignment.losses`): the distance's square is clamped at ``SQ_MIN``, camera depth at ``Z_MIN`` and
pixels to ``[PIX_MIN, PIX_MAX]``, with torch's clamp gradient (passed where ``lo <= x <= hi``).
"""

from __future__ import annotations

import math
import os
import threading

import numba

SQ_MIN = 1e-30
Z_MIN = 1e-3
PIX_MIN, PIX_MAX = -1000.0, 2000.0
# reassociation (SIMD sums over a chunk) and fused multiply-add only: no "nnan"/"ninf", so a NaN or inf input still
# reaches the loss (the optimiser's non-finite guard relies on it)
FASTMATH = {"reassoc", "contract", "nsz"}
# numba's default ("workqueue") threading layer must not be entered from two Python threads at once (it aborts the
# process): parallel kernels are serialised across threads
LOCK = threading.Lock()

# gammas with a compiled form (the reference's 1.5 and 0.5, and 1, 2); others use the autograd path
KERNEL_GAMMAS = {0.5: 1, 1.0: 2, 1.5: 3, 2.0: 4}


def gamma_offset(gamma: float) -> float:
    """Offset ``o = (1/gamma)^(1/(gamma-1))`` making the gamma loss ``(r + o)^gamma - o^gamma`` have slope 1 at 0;
    0 for ``gamma = 1`` (the plain distance). The one definition, used by the kernels and the autograd twin."""
    return 0.0 if gamma == 1 else (1.0 / gamma) ** (1.0 / (gamma - 1.0))


# trusted matches from which AlignConfig.threads=0 runs the match kernel on every core: there one iteration's
# parallel region takes ~150 ms or more, and a thread descheduled by another process delays it by a small fraction.
# Measured beside one busy process (benchmarks/README.md, "Busy core"): 2 threads cost 1.07x of 1 thread's
# optimisation time at 4.4 M matches (and save 1.5x on a quiet machine), but 1.42x at 1.1 M
PARALLEL_MIN_MATCHES = 4_000_000


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def kernel_threads(threads: int, n_matches: int) -> int:
    """Threads of the match kernel for ``AlignConfig.threads`` on a problem of ``n_matches`` trusted matches:
    ``threads`` when > 0, else 1 below :data:`PARALLEL_MIN_MATCHES` and :func:`available_cores` from it."""
    if threads > 0:
        return int(threads)
    return 1 if n_matches < PARALLEL_MIN_MATCHES else available_cores()


def set_threads(threads: int) -> None:
    """Numba threads for the kernels: ``threads`` (>= 1; capped at numba's pool). Call under :data:`LOCK`."""
    want = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


@numba.njit(cache=True, inline="always")
def rho(r: float, gcode: int, gamma: float, off: float) -> tuple[float, float]:
    """``(r + off)^gamma`` and its derivative divided by ``r``, for the gammas of ``KERNEL_GAMMAS`` (``gcode``).
    Written as selects on the loop-invariant ``gcode`` with one ``sqrt`` and one division and no ``pow``, so that
    the match loops vectorise."""
    t = r + off
    s = math.sqrt(t)
    rho = s if gcode == 1 else (t if gcode == 2 else (t * s if gcode == 3 else t * t))
    return rho, gamma * rho / (t * r)
