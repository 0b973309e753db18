"""`python -m leanbert.healing ...` is `leanbert-heal ...`."""

import sys

from .cli import main

sys.exit(main())
