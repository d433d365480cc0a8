"""Describe the machine a benchmark runs on, for the lines each script prints with its figures."""

import platform
from pathlib import Path


def cpu_model():
    """Return the CPU model name from /proc/cpuinfo, or platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
