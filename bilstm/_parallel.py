"""Run the two directions of a BiLSTM at the same time, one thread each.

The two directions share no data until their outputs are merged, so the
forward recurrence and the backward pass can run each direction in its own
thread.  numpy releases the GIL inside matrix products and inside array
operations on more than a few hundred values, so the threads run on two
cores at once.  Results agree with the serial loop to rounding, but need
not be bit-identical.

The environment variable ``BILSTM_PARALLEL_DIRECTIONS`` sets the rule:

- unset, empty or ``auto`` (the default): a call runs in parallel when it
  meets the conditions below, the process may use exactly 2 CPUs, and no
  other thread of the process is running at its start, so that a CPU is
  idle.  The last check reads ``/proc/self/task``; where that is missing
  (outside Linux), calls stay serial.
- ``1``: a call runs in parallel whenever it meets the conditions below.
- ``0``: calls always run serially.

The conditions for ``1`` and ``auto`` alike: the call is large enough
(:data:`MIN_PARALLEL_WORK` and :data:`MIN_PARALLEL_BLOCK`), the process may
use 2 or more CPUs, and numpy's BLAS is an OpenBLAS whose thread count can
be set (see below).  :func:`serial_reasons` and :func:`automatic_reasons`
return the conditions that keep a call serial.

Costs and effects, measured on a 2-CPU machine (AMD EPYC, numpy 2.4.6 with
OpenBLAS 0.3.31, 2026-12-05):

- A multithreaded BLAS called from two threads at once slows down: without
  a limit, forward at the benchmark size took 16-19 ms in two threads
  against 15 ms serially.  So while directions run in parallel, numpy's
  OpenBLAS runs on one thread.  That setting is process-wide: BLAS calls
  made by other threads at the same time run on one thread too.  OpenBLAS
  has no per-thread setting: ``openblas_set_num_threads_local(1)`` called in
  one thread also set the main thread's count to 1.
- After a multithreaded BLAS call, one OpenBLAS worker thread kept a core
  busy for 0.1-0.2 s, with or without a lower thread count.  A parallel
  call in that time competes with it for the cores.  In a loop that ran the
  reference, a numpy dense layer and the reference's backward, one after
  the other, ``1`` took 1.28-1.43x the time of ``0``.  ``auto`` saw the
  spinning worker at every call and ran them all serially.  In a loop of
  the reference's forward and backward alone, ``1`` took 0.83-0.85x the
  serial time (``benchmarks/bench_mixed_loop.py``, 2 runs).
- Under ``auto``, one serial call makes the rest of a loop serial, as
  long as its calls come less than about 0.1 s apart.  A serial call's own
  products leave the OpenBLAS worker spinning, and the next call counts it.
  So a loop stays serial once it starts right after another multithreaded
  BLAS call or right after numpy's import, or once any of its calls runs
  serially.
- ``auto`` sees only this process's threads.  Other processes busy on the
  same CPUs slow the parallel path down more than the serial one.
"""

import collections
import os
import threading
import time
import warnings

from bilstm.errors import InvalidArgumentError

ENV_VAR = "BILSTM_PARALLEL_DIRECTIONS"
"""Environment variable that sets the rule: ``auto`` (the default), ``1`` or ``0``."""

AUTOMATIC_CPUS = 2
"""The one number of usable CPUs at which ``auto`` runs directions in parallel.

It is the only count at which the two paths were compared."""

MIN_PARALLEL_WORK = 50_000_000
"""Multiply-adds of one direction's step products below which a call stays serial.

A parallel call costs about 0.1-0.3 ms more at the start, and now and then
one thread waits up to 5 ms (Python's switch interval) for the GIL.  On the
2-CPU machine, calls of 0.06 to 25 million multiply-adds mostly took 1.5-2x
the serial time in parallel (two float64 cases took 0.93x and 0.96x).  Calls
of 50 to 316 million (the benchmark case, n_ex=32, n_t=100, n_in=64, H=128)
with gate blocks of at least 2048 values took 0.75-0.98x."""

MIN_PARALLEL_BLOCK = 2048
"""Values in one gate block of one step, H * n_ex, below which a call stays serial.

Each array operation on a small block hands the GIL between the threads for
little work.  Calls of 75 to 132 million multiply-adds with blocks of 64 to
128 values took 1.2-1.7x the serial time in parallel."""

# NOTE: every figure here is from one 2-CPU machine.  With more CPUs a serial
# loop can give each product several BLAS threads, while parallel directions
# hold the BLAS to one.  Which is faster there was not measured, so ``auto``
# stays serial there.

BOTH = slice(None)
"""The slice of the direction axis that :func:`run_directions` passes for a serial run."""


class _NeverCancelled:
    """The ``cancel`` argument of serial runs: never set, and shared by all of them."""

    @staticmethod
    def is_set():
        return False

    @staticmethod
    def set():
        raise RuntimeError("internal error: a serial run's cancel flag cannot be set")


_NEVER_CANCELLED = _NeverCancelled()

_SETTINGS = {"": "auto", "auto": "auto", "1": "on", "0": "off"}
"""Accepted values of :data:`ENV_VAR`, after stripping blanks, and the rule each one sets."""


def setting():
    """Return the rule that :data:`ENV_VAR` sets: ``"auto"``, ``"on"`` or ``"off"``.

    Raises
    ------
    InvalidArgumentError
        If the variable is set to anything but ``auto``, ``1``, ``0`` or the
        empty string.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if value in _SETTINGS:
        return _SETTINGS[value]
    raise InvalidArgumentError(
        f"environment variable {ENV_VAR} is {os.environ[ENV_VAR]!r}, but it must be auto "
        f"(run large calls' directions in parallel when a CPU is idle), 1 (whenever they are "
        f"large enough) or 0 (never); unset it for the default, auto"
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


def _numpy_blas_is_openblas():
    """Return whether numpy was built against an OpenBLAS; None where its build information is missing."""
    import numpy

    try:
        name = numpy.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except (AttributeError, KeyError, TypeError):
        return None
    return "openblas" in str(name).lower()


class _OpenBLASThreads:
    """Hold the process's OpenBLAS libraries at one thread while any parallel run is active.

    The first run to enter saves each library's thread count and sets it to
    1.  The last to leave, from whichever thread, restores the saved counts,
    so counts that other code sets in between are overwritten.  The libraries
    are the pthreads builds of OpenBLAS loaded at the first use, numpy's
    among them, and ones loaded later are not limited.  They are set through
    their own C API.  threadpoolctl lists them, but its own setter is not used.  In
    threadpoolctl 3.8.0 that setter silently ignores every thread but the
    first one that set a count (3.5.0 did not), and the last run to leave may
    be on another thread than the first to enter.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._saved = None
        self._libraries = None
        self.filepaths = []
        """Paths of the handled libraries, filled at the first use."""
        if hasattr(os, "register_at_fork"):
            # Holding the lock across fork() keeps a run that is entering or
            # leaving from being cut in half in the child.
            os.register_at_fork(
                before=lambda: self._lock.acquire(),
                after_in_parent=lambda: self._lock.release(),
                after_in_child=self._reset_in_child,
            )

    def _apis(self):
        """Return the (get, set) pairs of the handled libraries, none if numpy's BLAS is not one."""
        if self._libraries is None:
            self._libraries = []
            if _numpy_blas_is_openblas() is False:
                return self._libraries
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
                    self.filepaths.append(info["filepath"])
        return self._libraries

    def available(self):
        """Return whether numpy's BLAS is an OpenBLAS and a loaded one's thread count can be set."""
        with self._lock:
            return bool(self._apis())

    # NOTE: an interrupt (KeyboardInterrupt, SIGALRM) raised between the
    # thread-count calls and the update of _active below can leave the
    # counts at 1 for the rest of the process.  Python cannot defer it there.
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
        # there to restore the counts, and they are restored now.  The lock
        # was held across fork(), and the child gets a fresh one.
        self._lock = threading.Lock()
        if self._active:
            self._active = 0
            self._restore()


_OPENBLAS = _OpenBLASThreads()


def _size_reasons(work, block):
    """Return why a call of this size stays serial, or nothing (sizes as in :func:`serial_reasons`)."""
    reasons = []
    if work == 0:
        reasons.append("no work (no time steps or no examples)")
    elif work < MIN_PARALLEL_WORK:
        reasons.append(f"{work:,} multiply-adds per direction, under the minimum of "
                       f"{MIN_PARALLEL_WORK:,}")
    if 0 < block < MIN_PARALLEL_BLOCK:
        reasons.append(f"gate blocks of {block:,} values, under the minimum of "
                       f"{MIN_PARALLEL_BLOCK:,}")
    return reasons


def _platform_reasons():
    """Return why no call can run in parallel in this process, or nothing."""
    reasons = []
    if usable_cpus() < 2:
        reasons.append("only 1 usable CPU")
    if not _OPENBLAS.available():
        reasons.append("numpy's BLAS is not an OpenBLAS (pthreads build) whose thread "
                       "count can be set")
    return reasons


def serial_reasons(work, block):
    """Return why a call would stay serial with :data:`ENV_VAR` set to 1, or nothing if it would not.

    With ``auto``, :func:`automatic_reasons` adds its own conditions.

    Parameters
    ----------
    work : int
        Multiply-adds of one direction's step products over all steps.
    block : int
        Values in one gate block of one step, H * n_ex.

    Returns
    -------
    list of str
        One phrase per unmet condition.
    """
    return _size_reasons(work, block) + _platform_reasons()


_TASKS = "/proc/self/task"
"""Folder with one entry per thread of this process, on Linux."""

_ENDED_WORKERS = collections.deque(maxlen=16)
"""(native id, time.monotonic() at its end) of the latest ended worker threads of :func:`run_directions`.

A worker that was just joined can still be in state ``R`` while the kernel
ends it.  Counting it would make the next call serial for no reason."""

_ENDED_WORKERS_LOCK = threading.Lock()

ENDED_WORKER_GRACE = 1.0
"""Seconds after its end during which a worker's thread id is skipped.

The kernel ends a joined thread within far less.  Later, Linux may give the
id to a new thread, which must be counted again."""


def _reset_ended_workers_in_child():
    # Another thread may have held the lock at fork(), and would never release
    # it in the child.  The child starts with no worker threads.
    global _ENDED_WORKERS_LOCK
    _ENDED_WORKERS_LOCK = threading.Lock()
    _ENDED_WORKERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_ended_workers_in_child)


def _record_ended_worker():
    """Record the calling worker thread as ended, for :func:`other_threads_running`."""
    with _ENDED_WORKERS_LOCK:
        _ENDED_WORKERS.append((threading.get_native_id(), time.monotonic()))


def _recently_ended_workers():
    """Return the thread ids, as strings, of workers that ended less than ENDED_WORKER_GRACE ago."""
    now = time.monotonic()
    with _ENDED_WORKERS_LOCK:
        return {str(tid) for tid, ended in _ENDED_WORKERS if now - ended < ENDED_WORKER_GRACE}


def _is_running(stat):
    """Return whether the bytes of a ``/proc/.../stat`` file give the state ``R``.

    The state follows the thread's name, which is in parentheses and may
    itself contain spaces, parentheses and bytes that are not UTF-8.
    """
    end_of_name = stat.rfind(b")")
    return end_of_name >= 0 and stat[end_of_name + 2:end_of_name + 3] == b"R"


def other_threads_running():
    """Return how many other threads of this process are running or runnable, or None without /proc.

    A thread counts when its state in ``/proc/self/task/<tid>/stat`` is
    ``R``.  An OpenBLAS or OpenMP worker that spins while it waits for work
    is in that state.  A Python thread that waits for the GIL is not, and
    this module's worker threads that ended in the last
    :data:`ENDED_WORKER_GRACE` seconds are not counted.
    """
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None

    skipped = _recently_ended_workers()
    skipped.add(str(threading.get_native_id()))
    count = 0
    for tid in tids:
        if tid in skipped:
            continue
        try:
            with open(os.path.join(_TASKS, tid, "stat"), "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            # The thread ended between the listing and the read.
            continue
        count += _is_running(stat)
    return count


def automatic_reasons():
    """Return why ``auto`` would keep a call serial that ``1`` would run in parallel.

    Returns
    -------
    list of str
        One phrase per unmet condition, or nothing.  Call it only for calls
        with no :func:`serial_reasons`, because it reads ``/proc``.
    """
    reasons = []
    cpus = usable_cpus()
    if cpus > AUTOMATIC_CPUS:
        reasons.append(f"{cpus} usable CPUs, and {ENV_VAR}=auto runs directions in parallel "
                       f"only with {AUTOMATIC_CPUS}")
    running = other_threads_running()
    if running is None:
        reasons.append(f"no {_TASKS} to tell whether a CPU is idle")
    elif running:
        reasons.append(f"{running} other thread(s) of this process running, so no CPU is idle")
    return reasons


def in_parallel(work, block):
    """Return whether a call runs its directions in parallel (sizes as in :func:`serial_reasons`)."""
    rule = setting()
    # The size check comes first because it is cheap, and most calls, those
    # of the property suite among them, fail it.
    if rule == "off" or _size_reasons(work, block) or _platform_reasons():
        return False
    return rule == "on" or not automatic_reasons()


def _wait_for(done, cancel):
    """Wait until the event ``done`` is set, through any further interrupt.

    The caller is already raising an exception, so interrupts that arrive
    here are dropped.  Each one sets ``cancel`` again, and the worker ends
    within one time step of that.  The OpenBLAS limit must outlive it.
    """
    while True:
        try:
            done.wait()
            return
        except BaseException:  # dropped: the caller raises the first exception
            cancel.set()


def _report_other_error(error, other):
    """Attach the worker's exception ``other`` to ``error``, which is being raised."""
    message = f"the backward direction's thread also raised {type(other).__name__}: {other}"
    if hasattr(error, "add_note"):
        error.add_note(message)
    else:
        # Python 3.10 has no exception notes.
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def run_directions(task, work, block):
    """Run ``task`` over both directions, in one call or in two parallel ones.

    Parameters
    ----------
    task : callable
        Called as ``task(d, cancel)``.  ``d`` is a slice of the leading
        direction axis: :data:`BOTH` for both directions at once, or
        ``slice(0, 1)`` and ``slice(1, 2)`` for one each.  ``cancel`` has an
        ``is_set()`` method that turns true when the other thread failed or
        the calling thread was interrupted.  The task should check it once
        per time step and return early.  The task writes its results into
        views of preallocated arrays, and its return value is ignored.
    work, block : int
        Size of the call, for :func:`in_parallel`.

    Raises
    ------
    BaseException
        Whatever ``task`` raised, in either thread, or an interrupt of the
        calling thread.  When both threads raise, the calling thread's
        exception is raised, with a note on the other (a RuntimeWarning on
        Python 3.10).
    """
    if not in_parallel(work, block):
        task(BOTH, _NEVER_CANCELLED)
        return

    cancel = threading.Event()
    done = threading.Event()
    worker_errors = []

    def backward_direction():
        try:
            task(slice(1, 2), cancel)
        except BaseException as error:  # re-raised in the calling thread below
            worker_errors.append(error)
            cancel.set()
        finally:
            _record_ended_worker()
            done.set()

    worker = threading.Thread(target=backward_direction, name="bilstm-backward-direction")
    with _OPENBLAS:
        try:
            worker.start()
            task(slice(0, 1), cancel)
            # Wait on an event, not Thread.join, because an interrupted join
            # can mark a running thread as ended (seen on Python 3.10 to 3.12).
            done.wait()
        except BaseException as error:
            cancel.set()
            if worker.ident is not None:
                _wait_for(done, cancel)
            if worker_errors:
                _report_other_error(error, worker_errors[0])
            raise
    worker.join()

    if worker_errors:
        raise worker_errors[0]
