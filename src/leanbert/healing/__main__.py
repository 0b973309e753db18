"""`python -m leanbert.healing ...` (also under `accelerate launch -m`) is `leanbert-heal ...`."""

import sys

from ..commands.heal import main

sys.exit(main())
