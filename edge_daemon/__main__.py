"""`python -m edge_daemon` is the `emotion-edge` command."""

import sys

from .cli import main

sys.exit(main())
