"""``python -m compare``: the same as the ``rnn-compare`` command (see `compare.cli`)."""

import sys

from .cli import main

sys.exit(main())
