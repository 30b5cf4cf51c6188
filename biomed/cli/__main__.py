"""``python -m biomed.cli``: the same as the ``biomed`` command."""

import sys

from biomed.cli.main import main

sys.exit(main())
