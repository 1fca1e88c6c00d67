"""``python -m steerc.cli``: the ``steerc`` command."""

import sys

from steerc.cli import main

sys.exit(main())
