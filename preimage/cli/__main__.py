"""``python -m preimage.cli``: the ``preimage`` command."""

import sys

from . import main

sys.exit(main())
