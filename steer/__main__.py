"""``python -m steer``: the ``steer`` command (see ``python -m steer --help``)."""

import sys

from .cli import main

sys.exit(main())
