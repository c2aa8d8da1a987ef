"""``python -m sockferry`` runs the command line."""

import sys

from sockferry.cli import main

sys.exit(main())
