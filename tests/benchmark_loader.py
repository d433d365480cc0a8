"""Load a script of benchmarks/ as a module, for the smoke tests of the benchmarks."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name):
    """Execute ``benchmarks/<name>.py`` as a fresh module named ``name`` and return it."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
