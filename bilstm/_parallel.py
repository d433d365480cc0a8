"""Run the two directions of a BiLSTM at the same time, one thread each (opt-in).

The two directions share no data until their outputs are merged, so the
forward recurrence and the backward pass can run each direction in its own
thread.  numpy releases the GIL inside matrix products and inside array
operations on more than a few hundred values, so the threads run on two
cores at once.

Set the environment variable ``BILSTM_PARALLEL_DIRECTIONS=1`` to turn this
on; unset, empty or ``0`` keeps the serial loop.  Even when it is on, a call
stays serial unless it has at least :data:`MIN_PARALLEL_WORK` multiply-adds
per direction, the process may use 2 or more CPUs, and the thread count of
numpy's OpenBLAS can be set (see below).  Results agree with the serial loop
to rounding, but need not be bit-identical.

Costs, measured on a 2-CPU machine (AMD EPYC, numpy 2.4.6 with OpenBLAS
0.3.31), which is why this is not the default:

- A multithreaded BLAS called from two threads at once slows down (two
  256 x 256 float64 products took 7.3 ms this way, against 1 ms one after
  the other).  So while directions run in parallel, the OpenBLAS libraries
  of the process run on one thread.  That setting is process-wide: BLAS
  calls made by other threads at the same time run on one thread too.
  OpenBLAS has no per-thread setting: ``openblas_set_num_threads_local(1)``
  called in one thread also set the main thread's count to 1.
- After a multithreaded BLAS call, one OpenBLAS worker thread kept a core
  busy for about 0.1 s, with or without a lower thread count.  A parallel
  call in that time competes with it for the cores.  In a loop that ran the
  reference, a numpy dense layer and the reference's backward, one after
  the other, parallel directions were 5-35% slower than the serial loop.
  Back-to-back reference calls, as in ``benchmarks/bench_reference.py``,
  were 0.75-0.92x the serial time.
"""

import os
import threading

from bilstm.errors import InvalidArgumentError

ENV_VAR = "BILSTM_PARALLEL_DIRECTIONS"
"""Environment variable that turns parallel directions on (``1``) or off (``0``)."""

MIN_PARALLEL_WORK = 50_000_000
"""Multiply-adds of one direction's step products below which a call stays serial.

A parallel call costs about 0.3 ms more at the start, and now and then one
thread waits up to 5 ms (Python's switch interval) for the GIL.  On the
2-CPU machine, float32 calls of 1 to 25 million multiply-adds were 1.5-2x
slower in parallel, and calls from 50 million on were 0.75-0.98x the serial
time.  The benchmark case (n_ex=32, n_t=100, n_in=64, H=128) has 316
million."""

BOTH = slice(None)
"""The slice of the direction axis that :func:`run_directions` passes for a serial run."""

_NEVER_CANCELLED = threading.Event()
"""The ``cancel`` event of serial runs, never set; shared because creating one costs microseconds."""

_OFF_VALUES = ("", "0")
_ON_VALUES = ("1",)


def enabled():
    """Return whether :data:`ENV_VAR` turns parallel directions on.

    Raises
    ------
    InvalidArgumentError
        If the variable is set to anything but ``1``, ``0`` or the empty string.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if value in _ON_VALUES:
        return True
    if value in _OFF_VALUES:
        return False
    raise InvalidArgumentError(
        f"environment variable {ENV_VAR} is {os.environ[ENV_VAR]!r}, but it must be "
        f"1 (run large calls' directions in parallel) or 0 (never); unset it for the default, 0"
    )


def usable_cpus():
    """Return how many CPUs this process may run on (its CPU affinity, not a cgroup quota)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_SYMBOL_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
"""Name decorations of the OpenBLAS C API: plain, and scipy-openblas's in numpy's wheels."""


def _openblas_thread_api(filepath):
    """Return the (get, set) thread-count functions of the OpenBLAS at ``filepath``, or None."""
    import ctypes

    try:
        library = ctypes.CDLL(filepath)
    except OSError:
        return None
    for prefix, suffix in _SYMBOL_AFFIXES:
        get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
        set_ = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
        if get is not None and set_ is not None:
            get.restype = ctypes.c_int
            set_.argtypes = [ctypes.c_int]
            set_.restype = None
            return get, set_
    return None


class _OpenBLASThreads:
    """Hold the process's OpenBLAS libraries at one thread while any parallel run is active.

    The first run to enter saves each library's thread count and sets it to
    1; the last to leave, from whichever thread, restores the saved counts.
    Only OpenBLAS builds with the pthreads threading layer are handled,
    through their own C API.  threadpoolctl lists the loaded libraries, but
    its own setter is not used.  In threadpoolctl 3.8.0 that setter silently
    ignores every thread but the first one that set a count (3.5.0 did not),
    and the last run to leave may be on another thread than the first to
    enter.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._saved = None
        self._libraries = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset_in_child)

    def _apis(self):
        """Return the (get, set) pairs of the loaded OpenBLAS libraries; empty if none is usable."""
        if self._libraries is None:
            self._libraries = []
            try:
                import threadpoolctl
            except ImportError:
                return self._libraries
            for info in threadpoolctl.threadpool_info():
                if info.get("internal_api") != "openblas":
                    continue
                if info.get("threading_layer") != "pthreads":
                    continue
                api = _openblas_thread_api(info["filepath"])
                if api is not None:
                    self._libraries.append(api)
        return self._libraries

    def available(self):
        """Return whether a loaded OpenBLAS library's thread count can be set."""
        with self._lock:
            return bool(self._apis())

    def thread_counts(self):
        """Return the current thread count of each handled library."""
        with self._lock:
            return [get() for get, _ in self._apis()]

    def __enter__(self):
        with self._lock:
            if self._active == 0:
                self._saved = [get() for get, _ in self._apis()]
                for _, set_ in self._apis():
                    set_(1)
            self._active += 1
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._restore()

    def _restore(self):
        for (_, set_), count in zip(self._apis(), self._saved):
            set_(count)
        self._saved = None

    def _reset_in_child(self):
        # The child has only the forking thread, so no parallel run can end
        # there to restore the counts: restore them now.
        self._lock = threading.Lock()
        if self._active:
            self._active = 0
            self._restore()


_OPENBLAS = _OpenBLASThreads()


def serial_reasons(work):
    """Return why a call would stay serial with :data:`ENV_VAR` set to 1; empty if it would not.

    Parameters
    ----------
    work : int
        Multiply-adds of one direction's step products over all steps.

    Returns
    -------
    list of str
        One phrase per unmet condition.
    """
    reasons = []
    if work == 0:
        reasons.append("no work (no time steps or no examples)")
    elif work < MIN_PARALLEL_WORK:
        reasons.append(f"{work:,} multiply-adds per direction, under the minimum of "
                       f"{MIN_PARALLEL_WORK:,}")
    if usable_cpus() < 2:
        reasons.append("only 1 usable CPU")
    if not _OPENBLAS.available():
        reasons.append("no loaded OpenBLAS (pthreads build) whose thread count can be set")
    return reasons


def in_parallel(work):
    """Return whether a call of ``work`` multiply-adds per direction runs its directions in parallel."""
    return enabled() and not serial_reasons(work)


def _join(worker):
    """Wait for ``worker`` to end, even through KeyboardInterrupt; then re-raise the first interrupt.

    The OpenBLAS limit must outlive the worker, and the worker ends within
    one time step once ``cancel`` is set.
    """
    interrupt = None
    while True:
        try:
            worker.join()
            break
        except BaseException as error:  # re-raised below, once the worker has ended
            interrupt = interrupt or error
    if interrupt is not None:
        raise interrupt


def run_directions(task, work):
    """Run ``task`` over both directions, in one call or in two parallel ones.

    Parameters
    ----------
    task : callable
        Called as ``task(d, cancel)``.  ``d`` is a slice of the leading
        direction axis: :data:`BOTH` for both directions at once, or
        ``slice(0, 1)`` and ``slice(1, 2)`` for one each.  ``cancel`` is a
        :class:`threading.Event` that is set when the other thread failed;
        the task should check it once per time step and return early.  The
        task writes its results into views of preallocated arrays, and its
        return value is ignored.
    work : int
        Multiply-adds of one direction's step products, for :func:`in_parallel`.

    Raises
    ------
    BaseException
        Whatever ``task`` raised, in either thread.  When both raise, the
        calling thread's exception is raised, with a note on the other.
    """
    if not in_parallel(work):
        task(BOTH, _NEVER_CANCELLED)
        return

    cancel = threading.Event()
    worker_errors = []

    def backward_direction():
        try:
            task(slice(1, 2), cancel)
        except BaseException as error:  # re-raised in the calling thread below
            worker_errors.append(error)
            cancel.set()

    worker = threading.Thread(target=backward_direction, name="bilstm-backward-direction")
    with _OPENBLAS:
        try:
            worker.start()
            task(slice(0, 1), cancel)
        except BaseException as error:
            cancel.set()
            if worker.ident is not None:
                _join(worker)
            if worker_errors and hasattr(error, "add_note"):
                other = worker_errors[0]
                error.add_note(f"the backward direction's thread also raised "
                               f"{type(other).__name__}: {other}")
            raise
        _join(worker)

    if worker_errors:
        raise worker_errors[0]
