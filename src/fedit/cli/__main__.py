"""``python -m fedit.cli``: the ``fedit`` command."""

import sys

from fedit.cli.main import main

sys.exit(main())
