"""``python -m cic_fast`` is ``cic-fast``."""

import sys

from cic_fast.cli import main

sys.exit(main())
