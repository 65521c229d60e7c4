"""``python -m compare``: the ``rnn-compare`` command."""

import sys

from .cli import main

sys.exit(main())
