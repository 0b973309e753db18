"""`python -m leanbert.export ...` is `leanbert-export ...`."""

import sys

from ..commands.export import main

sys.exit(main())
