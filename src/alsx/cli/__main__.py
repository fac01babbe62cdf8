"""``python -m alsx.cli``: the ``alsx`` command."""

import sys

from alsx.cli import main

sys.exit(main())
