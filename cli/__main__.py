"""``python -m cli``: the same as the ``biomed`` command."""

import sys

from cli.main import main

sys.exit(main())
