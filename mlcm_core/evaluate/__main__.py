"""``python -m mlcm_core.evaluate [options]``: the same as ``mlcm evaluate [options]``."""

import sys

from mlcm_core.evaluate.cli import main

sys.exit(main())
