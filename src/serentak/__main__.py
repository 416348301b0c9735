"""``python -m serentak``: the same as the ``serentak`` command."""

import sys

from .cli import main

sys.exit(main())
