"""Calls into the implementation under test, with its contract checked.

Every call a property makes goes through :class:`GuardedModel`, which turns
an exception raised by the implementation, a result of the wrong shape, a
non-finite result for finite input, and a call that exceeds the time limit
into :class:`~properties.errors.ImplementationError`.  Anything else that
escapes a property is a bug of the harness.
"""

import signal
import threading
import traceback
from contextlib import contextmanager

import numpy as np

from bilstm.params import PARAM_NAMES, param_shapes
from bilstm.reference import output_shape
from properties.errors import ImplementationError

DEFAULT_TIME_LIMIT = 30.0
"""Seconds one call into the implementation may take before it counts as hung."""


class _TimeLimitExceeded(BaseException):
    """Raised by the alarm handler; a BaseException so implementations cannot swallow it."""


@contextmanager
def time_limit(seconds, what):
    """Raise :class:`ImplementationError` when the block runs longer than ``seconds``.

    NOTE: the limit needs SIGALRM, so it applies only on POSIX and in the
    main thread; elsewhere the block runs without a limit.  A call stuck
    inside C code is interrupted only when it returns to Python.
    """
    usable = (
        seconds is not None and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise _TimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TimeLimitExceeded:
        raise ImplementationError(
            f"{what} did not return within the time limit of {seconds:g} s "
            f"(change it with --time-limit)"
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _invoke(what, function, time_limit_s, *args, **kwargs):
    try:
        with time_limit(time_limit_s, what):
            return function(*args, **kwargs)
    except ImplementationError:
        raise
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise ImplementationError(
            f"{what} raised {type(exc).__name__}: {exc} "
            f"(at {frame.filename}:{frame.lineno} in {frame.name})"
        ) from exc


def _check_shape(what, name, array, shape):
    if array is None:
        raise ImplementationError(f"{what} returned no {name}; expected shape {shape}")
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise ImplementationError(
            f"{what} returned {name} of shape {array.shape}; expected {tuple(shape)}"
        )
    return array


def _check_finite(what, name, array, inputs_finite):
    if inputs_finite and not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ImplementationError(
            f"{what} returned a non-finite {name} ({array[index]!r} at index {index}) "
            f"for finite input"
        )


def _all_finite(*arrays):
    return all(a is None or np.isfinite(a).all() for a in arrays)


class GuardedModel:
    """A model of the implementation under test with its contract enforced."""

    def __init__(self, implementation, params, merge_mode, time_limit_s=DEFAULT_TIME_LIMIT):
        self.capabilities = implementation.capabilities
        self.merge_mode = merge_mode
        self.time_limit_s = time_limit_s
        self.hidden_size = np.shape(params["W_hh_fwd"])[0]
        self._x = None
        self._inputs_finite = True
        self._model = _invoke(
            f"{implementation.name}.build(merge_mode={merge_mode!r})",
            implementation.build, time_limit_s, params, merge_mode=merge_mode,
        )

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        """Call the model's forward and check the shapes of what it returns."""
        kwargs = {}
        if lengths is not None:
            kwargs["lengths"] = lengths
        if h0 is not None:
            kwargs["h0"], kwargs["c0"] = h0, c0

        what = f"forward (merge_mode={self.merge_mode!r})"
        out = _invoke(what, self._model.forward, self.time_limit_s, x, **kwargs)
        n_ex, _, n_t = np.shape(x)
        self._x = x
        self._inputs_finite = _all_finite(x, h0, c0)

        out.y = _check_shape(what, "y", out.y, output_shape(n_ex, self.hidden_size, n_t, self.merge_mode))
        _check_finite(what, "y", out.y, self._inputs_finite)
        if self.capabilities.final_state:
            state_shape = (2, n_ex, self.hidden_size)
            out.h_n = _check_shape(what, "h_n", out.h_n, state_shape)
            out.c_n = _check_shape(what, "c_n", out.c_n, state_shape)
        return out

    def backward(self, dy, *, dh_n=None, dc_n=None):
        """Call the model's backward and check the shapes of the gradients it returns."""
        kwargs = {}
        if dh_n is not None:
            kwargs["dh_n"], kwargs["dc_n"] = dh_n, dc_n

        what = f"backward (merge_mode={self.merge_mode!r})"
        grads = _invoke(what, self._model.backward, self.time_limit_s, dy, **kwargs)
        finite = self._inputs_finite and _all_finite(dy, dh_n, dc_n)

        grads.dx = _check_shape(what, "dx", grads.dx, np.shape(self._x))
        _check_finite(what, "dx", grads.dx, finite)
        if self.capabilities.param_gradients:
            self._check_dparams(what, grads.dparams, finite)
        if self.capabilities.state_gradients:
            state_shape = (2, np.shape(self._x)[0], self.hidden_size)
            grads.dh0 = _check_shape(what, "dh0", grads.dh0, state_shape)
            grads.dc0 = _check_shape(what, "dc0", grads.dc0, state_shape)
        return grads

    def _check_dparams(self, what, dparams, finite):
        if not isinstance(dparams, dict) or sorted(dparams) != sorted(PARAM_NAMES):
            keys = sorted(dparams) if isinstance(dparams, dict) else dparams
            raise ImplementationError(
                f"{what} returned dparams {keys!r}; expected a dict with keys {list(PARAM_NAMES)}"
            )
        shapes = param_shapes(np.shape(self._x)[1], self.hidden_size)
        for name in PARAM_NAMES:
            grad = _check_shape(what, f"dparams[{name!r}]", dparams[name], shapes[name])
            _check_finite(what, f"dparams[{name!r}]", grad, finite)
            dparams[name] = grad
