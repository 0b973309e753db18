"""`python -m leanbert.conversion ...` is `leanbert-convert ...`."""

import sys

from .cli import main

sys.exit(main())
