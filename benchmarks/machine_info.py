"""Describe the machine a benchmark runs on, for the lines each script prints with its figures."""

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model():
    """Return the CPU model name from /proc/cpuinfo, or platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_revision():
    """Return the checkout's short commit id, marked when files differ from it, or "unknown".

    The mark is " + uncommitted changes" when ``git status`` lists changed
    or untracked files, so figures are never tied to a commit they did not
    run.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    if commit.returncode != 0 or status.returncode != 0:
        return "unknown"
    revision = commit.stdout.strip()
    if status.stdout.strip():
        revision += " + uncommitted changes"
    return revision
