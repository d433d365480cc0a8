"""``python -m properties`` runs the ``bilstm-verify`` command line."""

import sys

from properties.cli import main

sys.exit(main())
