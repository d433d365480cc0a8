"""Defaults shared by the command line and the pytest plugin, defined once."""

DEFAULT_CASE_DIR = "bilstm-cases"
"""Folder, relative to the working directory, that case files of failures go to."""
