"""`python -m leanbert.conversion ...` is `leanbert-convert ...`."""

import sys

from ..commands.convert import main

sys.exit(main())
