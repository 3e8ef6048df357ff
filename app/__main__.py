"""``python -m app``: start the demo (see ``python -m app --help``)."""

import sys

from . import main

sys.exit(main())
