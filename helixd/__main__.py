"""``python -m helixd`` runs the daemon."""

from __future__ import annotations

import sys

from helixd.cli import main

sys.exit(main())
