"""``python -m serentak``: the same as the ``serentak`` command."""

import sys

from ._cli.main import main

sys.exit(main())
