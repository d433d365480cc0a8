"""Adapter for PyTorch's ``torch.nn.LSTM(n_in, H, bidirectional=True)``.

:meth:`TorchImplementation.build` creates one ``nn.LSTM`` in the dtype of
the parameters and loads them with :func:`bilstm.convert.to_torch_state_dict`.
Every forward call goes to that module.  :class:`TorchImplementation` feeds
it time-major input (n_t, n_ex, n_in), and :class:`TorchBatchFirstImplementation`
feeds batch-first input (n_ex, n_t, n_in) to a module built with
``batch_first=True``.

torch has no merge mode.  It returns the two directions concatenated on the
feature axis, forward half first.  This adapter composes every merge mode
from that output with torch operations: the sum, average or product of the
two halves, both halves stacked for ``None``, and the output unchanged for
``"concat"``.

Lengths go through ``pack_padded_sequence(..., enforce_sorted=False)`` and
``pad_packed_sequence(..., total_length=n_t)``.  torch rejects a length of 0,
so ``zero_length`` is False.

Gradients come from autograd.  Forward makes ``x``, ``h0`` and ``c0`` leaf
tensors that require grad (zero states when ``h0``/``c0`` are None, so that
``dh0``/``dc0`` exist) and keeps the graph.  Backward calls
``torch.autograd.grad`` on ``(y, h_n, c_n)`` with ``retain_graph=True``, so
it can run any number of times after one forward call.  The layout changes
between the reference layout and torch's are permutations inside the graph,
so ``dx`` and ``y`` come out in the reference layout directly.

NOTE: the adapter leaves torch's intra-op thread count as the process set
it.  The harness's LSTMs are tiny, and on a busy 2-core machine two OpenMP
threads made ``check --impl torch`` take 311 s where ``OMP_NUM_THREADS=1``
took 20 s (torch 2.13.0, load average about 5).
"""

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bilstm.convert import TORCH_KEYS, to_torch_state_dict
from bilstm.merge import MERGE_MODES, canonical_merge_mode
from bilstm.params import DIRECTIONS, PARAM_NAMES, hidden_size_of, input_size_of
from properties.errors import HarnessError
from properties.protocol import Capabilities, Grads, Implementation, Model, Output

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _torch_dtype(dtype):
    """Return the torch dtype of the numpy ``dtype`` of the parameters."""
    dtype = np.dtype(dtype)
    if dtype not in _TORCH_DTYPES:
        raise HarnessError(
            f"params have dtype {dtype}, but the torch adapter builds nn.LSTM in float32 "
            f"or float64 only; cast them with bilstm.cast_params(params, np.float32) "
            f"or np.float64"
        )
    return _TORCH_DTYPES[dtype]


def _leaf(array):
    """Return a copy of ``array`` as a tensor that requires grad.

    The copy keeps torch from sharing memory with the caller's array, and
    ``np.ascontiguousarray`` first makes negative strides, which torch
    rejects, positive.
    """
    return torch.tensor(np.ascontiguousarray(array)).requires_grad_(True)


def _to_numpy(tensor):
    """Return a numpy copy of ``tensor`` that shares no memory with the graph."""
    return tensor.detach().numpy().copy()


def _upstream(gradient, output):
    """Return ``gradient`` as a tensor, or zeros like ``output`` when it is None."""
    if gradient is None:
        return torch.zeros_like(output)
    return torch.tensor(np.ascontiguousarray(gradient))


def merge_halves(y_concat, hidden_size, merge_mode):
    """Compose a merge mode from torch's concatenated output, inside the autograd graph.

    Parameters
    ----------
    y_concat : torch.Tensor, shape (n_ex, 2H, n_t)
        Both directions, forward half first, in the reference layout.
    hidden_size : int
        ``H``.
    merge_mode : str or None
        A canonical merge mode.

    Returns
    -------
    torch.Tensor
        (n_ex, 2H, n_t) for ``"concat"``, (2, n_ex, H, n_t) for ``None`` and
        (n_ex, H, n_t) otherwise.
    """
    if merge_mode == "concat":
        return y_concat

    y_fwd, y_bwd = y_concat[:, :hidden_size], y_concat[:, hidden_size:]
    if merge_mode == "sum":
        return y_fwd + y_bwd
    if merge_mode == "average":
        return (y_fwd + y_bwd) / 2
    if merge_mode == "multiply":
        return y_fwd * y_bwd
    return torch.stack([y_fwd, y_bwd])


class TorchModel(Model):
    """One ``torch.nn.LSTM`` behind the model interface, with autograd for backward.

    Parameters
    ----------
    lstm : torch.nn.LSTM
        A single-layer bidirectional LSTM with its parameters loaded; every
        call goes to it.
    merge_mode : str or None
        A canonical merge mode, composed from the concatenated output.
    """

    def __init__(self, lstm, merge_mode):
        self.lstm = lstm
        self.merge_mode = merge_mode
        self._graph = None

    @property
    def batch_first(self):
        """Whether ``lstm`` takes (n_ex, n_t, n_in) input instead of (n_t, n_ex, n_in)."""
        return self.lstm.batch_first

    def forward(self, x, *, lengths=None, h0=None, c0=None):
        """Run the LSTM on ``x`` (n_ex, n_in, n_t) and keep the graph for :meth:`backward`.

        Returns an :class:`Output` with ``y`` in the reference layout and
        ``h_n``, ``c_n`` of shape (2, n_ex, H), the forward direction at index 0.
        """
        x_leaf = _leaf(x)
        state_shape = (2, x_leaf.shape[0], self.lstm.hidden_size)
        state_leaves = [
            torch.zeros(state_shape, dtype=x_leaf.dtype, requires_grad=True) if state is None
            else _leaf(state)
            for state in (h0, c0)
        ]

        # The caller may have turned gradients off; backward needs the graph.
        with torch.enable_grad():
            y_concat, h_n, c_n = self.run_lstm(x_leaf, lengths, *state_leaves)
            y = merge_halves(y_concat, self.lstm.hidden_size, self.merge_mode)

        self._graph = {"inputs": (x_leaf, *state_leaves), "outputs": (y, h_n, c_n)}
        return Output(_to_numpy(y), _to_numpy(h_n), _to_numpy(c_n))

    def run_lstm(self, x, lengths, h0, c0):
        """Call ``lstm`` on ``x`` and return its output in the reference layout.

        Parameters
        ----------
        x : torch.Tensor, shape (n_ex, n_in, n_t)
            Input in the reference layout.
        lengths : array of int, shape (n_ex,), or None
            Valid steps per example.
        h0, c0 : torch.Tensor, shape (2, n_ex, H)
            Initial states.

        Returns
        -------
        y_concat : torch.Tensor, shape (n_ex, 2H, n_t)
            Both directions, forward half first; 0 at padded steps.
        h_n, c_n : torch.Tensor, shape (2, n_ex, H)
            Final states as torch returns them.
        """
        n_t = x.shape[-1]
        framework_order = (0, 2, 1) if self.batch_first else (2, 0, 1)
        # A contiguous tensor, as a user's data loader would give it to torch.
        sequence = x.permute(*framework_order).contiguous()

        if lengths is None:
            out, (h_n, c_n) = self.lstm(sequence, (h0, c0))
        else:
            packed = pack_padded_sequence(
                sequence, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
                batch_first=self.batch_first, enforce_sorted=False,
            )
            packed_out, (h_n, c_n) = self.lstm(packed, (h0, c0))
            out, _ = pad_packed_sequence(packed_out, batch_first=self.batch_first,
                                         total_length=n_t)

        reference_order = (0, 2, 1) if self.batch_first else (1, 2, 0)
        return out.permute(*reference_order), h_n, c_n

    def backward(self, dy, *, dh_n=None, dc_n=None):
        """Return the gradients of the most recent forward call, by ``torch.autograd.grad``.

        ``dy`` has the shape of ``y``; ``dh_n`` and ``dc_n`` are (2, n_ex, H)
        or None for zero.  The graph is retained, so backward may be called
        again.  Parameter gradients come back in the reference's keys and
        layout: the gradient of ``W_ih_fwd`` is that of ``weight_ih_l0``,
        transposed, and so on.
        """
        if self._graph is None:
            raise HarnessError(
                "backward was called before forward on this TorchModel; call "
                "model.forward(x) first, because backward differentiates its graph"
            )

        outputs = self._graph["outputs"]
        upstream = [_upstream(gradient, output)
                    for gradient, output in zip((dy, dh_n, dc_n), outputs)]
        parameters = [self.lstm.get_parameter(key) for key in TORCH_KEYS]
        gradients = torch.autograd.grad(outputs, (*self._graph["inputs"], *parameters),
                                        upstream, retain_graph=True)

        dx, dh0, dc0 = (_to_numpy(g) for g in gradients[:3])
        dparams = _to_reference_gradients(dict(zip(TORCH_KEYS, gradients[3:])))
        return Grads(dx=dx, dparams=dparams, dh0=dh0, dc0=dc0)


def _to_reference_gradients(torch_gradients):
    """Convert gradients keyed like the state dict to the reference's keys and layout.

    torch adds ``bias_ih`` and ``bias_hh`` where the reference has one bias
    ``b``, so the gradient of ``b`` is the gradient of ``bias_ih``, which
    equals that of ``bias_hh``.  :func:`bilstm.convert.from_torch_state_dict`
    would add the two and double it.
    """
    dparams = {}
    for direction, suffix in zip(DIRECTIONS, ("", "_reverse")):
        weight_ih = torch_gradients[f"weight_ih_l0{suffix}"]
        weight_hh = torch_gradients[f"weight_hh_l0{suffix}"]
        dparams[f"W_ih_{direction}"] = np.ascontiguousarray(_to_numpy(weight_ih).T)
        dparams[f"W_hh_{direction}"] = np.ascontiguousarray(_to_numpy(weight_hh).T)
        dparams[f"b_{direction}"] = _to_numpy(torch_gradients[f"bias_ih_l0{suffix}"])
    return {name: dparams[name] for name in PARAM_NAMES}


class TorchImplementation(Implementation):
    """``torch.nn.LSTM(n_in, H, bidirectional=True)`` on time-major input, autograd backward."""

    name = "torch"
    description = "torch.nn.LSTM(bidirectional=True), time-major (n_t, n_ex, n_in), autograd"
    extra = "torch"
    batch_first = False
    model_class = TorchModel
    """The :class:`TorchModel` subclass :meth:`build` returns."""

    capabilities = Capabilities(
        merge_modes=frozenset(MERGE_MODES),
        dtypes=frozenset({"float32", "float64"}),
        lengths=True,
        zero_length=False,
        initial_state=True,
        final_state=True,
        backward=True,
        param_gradients=True,
        state_gradients=True,
        complex_input=False,
    )

    def version(self):
        return torch.__version__

    def build(self, params, *, merge_mode):
        """Return a model around one new ``nn.LSTM`` holding ``params`` in their dtype.

        Raises
        ------
        bilstm.errors.InvalidArgumentError
            For an unknown ``merge_mode`` or invalid ``params``.
        HarnessError
            For parameters that are neither float32 nor float64.
        """
        merge_mode = canonical_merge_mode(merge_mode)
        state_dict = to_torch_state_dict(params)
        dtype = _torch_dtype(state_dict["weight_ih_l0"].dtype)

        # nn.LSTM draws initial weights from torch's global generator; forking
        # it leaves the caller's random stream as it was.  load_state_dict
        # then overwrites every weight.
        with torch.random.fork_rng(devices=[]):
            lstm = torch.nn.LSTM(input_size_of(params), hidden_size_of(params),
                                 bidirectional=True, batch_first=self.batch_first, dtype=dtype)
        lstm.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})
        return self.model_class(lstm, merge_mode)


class TorchBatchFirstImplementation(TorchImplementation):
    """``torch.nn.LSTM(..., batch_first=True)`` on (n_ex, n_t, n_in) input, autograd backward."""

    name = "torch-batch-first"
    description = "torch.nn.LSTM(bidirectional=True, batch_first=True), autograd"
    batch_first = True
