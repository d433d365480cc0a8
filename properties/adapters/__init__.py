"""Built-in adapters and the loader behind ``--impl``.

``--impl NAME`` picks a built-in adapter from :data:`BUILTIN`;
``--impl module:attribute`` imports ``attribute`` from ``module``, which may
be an :class:`~properties.protocol.Implementation` instance, a subclass of
it, or a function with no arguments that returns an instance.
"""

import importlib

from properties.errors import UsageError
from properties.protocol import Implementation

BUILTIN = {
    "reference": ("properties.adapters.reference", "ReferenceImplementation", None),
    "numpy-ml": ("properties.adapters.numpy_ml", "NumpyMLImplementation", "numpy-ml"),
    "torch": ("properties.adapters.torch_lstm", "TorchImplementation", "torch"),
    "torch-batch-first": ("properties.adapters.torch_lstm", "TorchBatchFirstImplementation", "torch"),
    "keras": ("properties.adapters.keras_lstm", "KerasImplementation", "keras"),
    "onnxruntime": ("properties.adapters.onnxruntime_lstm", "OnnxRuntimeImplementation", "onnx"),
}
"""Built-in adapter names: (module, attribute, extra that installs the package)."""


def load_implementation(spec):
    """Return the :class:`Implementation` that ``spec`` names.

    Parameters
    ----------
    spec : str
        A name from :data:`BUILTIN`, or ``"module:attribute"``.

    Raises
    ------
    UsageError
        When the name is unknown, the module or its package is missing, or
        the attribute is not an implementation.
    """
    if spec in BUILTIN:
        module_name, attribute, extra = BUILTIN[spec]
    elif ":" in spec:
        module_name, _, attribute = spec.partition(":")
        extra = None
    else:
        names = ", ".join(BUILTIN)
        raise UsageError(
            f"--impl {spec!r} is not a built-in implementation ({names}) and has no "
            f"':'; name a built-in one or give module:attribute, e.g. mypkg.lstm:MyBiLSTM"
        )

    module = _import(spec, module_name, extra)
    if not hasattr(module, attribute):
        raise UsageError(
            f"--impl {spec!r}: module {module_name!r} has no attribute {attribute!r}; "
            f"check the spelling after the ':'"
        )
    return _instantiate(spec, getattr(module, attribute))


def _import(spec, module_name, extra):
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        if extra is not None:
            raise UsageError(
                f"--impl {spec!r} needs a package that is not installed ({exc}); "
                f"install it with: pip install 'bilstm-verify[{extra}]'"
            ) from None
        raise UsageError(
            f"--impl {spec!r}: module {module_name!r} could not be imported ({exc}); "
            f"check that it is on sys.path (run from its folder or install it)"
        ) from None


def _instantiate(spec, target):
    if isinstance(target, type) and issubclass(target, Implementation):
        target = target()
    elif callable(target) and not isinstance(target, Implementation):
        target = target()

    if not isinstance(target, Implementation):
        raise UsageError(
            f"--impl {spec!r} gives a {type(target).__name__}, not an Implementation; "
            f"subclass properties.protocol.Implementation (see the README's adapter section)"
        )
    return target
