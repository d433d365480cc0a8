"""Run the two directions of a BiLSTM at the same time, one thread each.

The two directions share no data until their outputs are merged, so the
forward recurrence and the backward pass can run each direction in its own
thread.  numpy releases the GIL inside matrix products and inside array
operations on more than a few hundred values, so the threads run on two
cores at once.

Both threads call the BLAS, and a multithreaded BLAS called from two threads
at once slows down (on a 2-core machine: forward took 16-19 ms this way,
against 15 ms for the serial loop).  So while directions run in parallel,
every BLAS library that threadpoolctl finds is limited to one thread.  That
limit is process-wide.  OpenBLAS has no per-thread setting: in the OpenBLAS
0.3.31 of numpy 2.4's wheels, ``openblas_set_num_threads_local(1)`` called
in one thread also set the count of the main thread to 1.  Other
threads of the process that call the BLAS during that time run on one
thread.  Concurrent calls share one limit, which is lifted when the last of
them ends.

Set the environment variable ``BILSTM_PARALLEL_DIRECTIONS`` to choose:

- ``auto`` (default): parallel when the process may use 2 or 3 CPUs, the
  BLAS thread count can be set, and the call is large enough (see
  :data:`MIN_PARALLEL_WORK` and :data:`MIN_PARALLEL_BLOCK`);
- ``1``: parallel for every call with at least one step and one example;
- ``0``: never; both directions run in one loop, stacked on a leading axis.

Results agree to rounding in every mode.  They need not be bit-identical,
because a BLAS may sum in another order when it runs on fewer threads.
"""

import os
import threading

from bilstm.errors import InvalidArgumentError

ENV_VAR = "BILSTM_PARALLEL_DIRECTIONS"
"""Environment variable that chooses when directions run in parallel."""

MODES = ("auto", "1", "0")
"""Valid values of :data:`ENV_VAR`."""

BOTH = slice(None)
"""The slice of the direction axis that :func:`run_directions` passes for a serial run."""

MIN_PARALLEL_WORK = 50_000_000
"""Multiply-adds of one direction's step products below which ``auto`` stays serial.

A parallel call costs about 0.3 ms more at the start, and now and then one
thread waits up to 5 ms (Python's switch interval) for the GIL.  Measured on
the 2-CPU benchmark machine, parallel calls were 1.5-2x slower than serial
ones up to about 25 million multiply-adds, and 0.75-0.98x from 50 million on.
The benchmark case (n_ex=32, n_t=100, n_in=64, H=128) has 316 million."""

MIN_PARALLEL_BLOCK = 2048
"""Values in one gate block of one step (H * n_ex) below which ``auto`` stays serial.

Each small array operation hands the GIL between the two threads, so with
small blocks the hand-overs cost more than the work they let overlap."""

# NOTE: auto mode is off from 4 CPUs on.  There, a serial loop can give each
# matrix product several BLAS threads, while parallel directions hold the
# BLAS to one thread each.  Which is faster there was not measured (the
# benchmark machine has 2 CPUs); BILSTM_PARALLEL_DIRECTIONS=1 forces it.
_MAX_AUTO_CPUS = 3


def usable_cpus():
    """Return how many CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def mode():
    """Return the mode set by :data:`ENV_VAR`; ``"auto"`` when it is unset.

    Raises
    ------
    InvalidArgumentError
        If the variable contains anything but ``auto``, ``1`` or ``0``.
    """
    value = os.environ.get(ENV_VAR, "auto").strip().lower()
    if value not in MODES:
        raise InvalidArgumentError(
            f"environment variable {ENV_VAR} is {os.environ[ENV_VAR]!r}, but it must be "
            f"one of {', '.join(MODES)}; set it to auto, or unset it, to let bilstm choose"
        )
    return value


class _BlasLimit:
    """Hold every BLAS library at one thread while at least one parallel run is active.

    Re-entrant across threads: the first run to enter sets the limit and the
    last to leave restores the counts that were there before.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._limiter = None
        self._controller = None
        self._loaded = False

    def _blas(self):
        """Return threadpoolctl's controller of the loaded BLAS libraries, or None."""
        if not self._loaded:
            self._loaded = True
            try:
                import threadpoolctl
            except ImportError:
                return None
            blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
            self._controller = blas if blas.lib_controllers else None
        return self._controller

    def available(self):
        """Return whether the BLAS thread count can be set."""
        with self._lock:
            return self._blas() is not None

    def __enter__(self):
        with self._lock:
            if self._active == 0 and self._blas() is not None:
                self._limiter = self._blas().limit(limits=1)
            self._active += 1
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._limiter is not None:
                self._limiter.restore_original_limits()
                self._limiter = None


_BLAS_LIMIT = _BlasLimit()


def in_parallel(work, block):
    """Return whether a call runs its directions in parallel.

    Parameters
    ----------
    work : int
        Multiply-adds of one direction's step products over all steps.
    block : int
        Values in one gate block of one step, H * n_ex.
    """
    chosen = mode()
    if chosen == "0" or work == 0:
        return False
    if chosen == "1":
        return True
    return (
        work >= MIN_PARALLEL_WORK
        and block >= MIN_PARALLEL_BLOCK
        and 2 <= usable_cpus() <= _MAX_AUTO_CPUS
        and _BLAS_LIMIT.available()
    )


def run_directions(task, work, block):
    """Run ``task`` over both directions, in one call or in two parallel ones.

    Parameters
    ----------
    task : callable
        Takes a slice of the leading direction axis, :data:`BOTH` for both
        directions at once or ``slice(0, 1)`` and ``slice(1, 2)`` for one
        each, and writes its results into views of preallocated arrays.
        Its return value is ignored.
    work, block : int
        Size of the call, for the ``auto`` rule (see :func:`in_parallel`).

    Raises
    ------
    Exception
        Whatever ``task`` raised, in either thread; the calling thread's own
        exception wins when both raise.
    """
    if not in_parallel(work, block):
        task(BOTH)
        return

    errors = []

    def backward_direction():
        try:
            task(slice(1, 2))
        except BaseException as error:  # re-raised in the calling thread below
            errors.append(error)

    with _BLAS_LIMIT:
        worker = threading.Thread(target=backward_direction, name="bilstm-backward-direction")
        worker.start()
        try:
            task(slice(0, 1))
        finally:
            worker.join()
    if errors:
        raise errors[0]
