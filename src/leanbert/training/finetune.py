"""`python -m leanbert.training.finetune ...` (and `accelerate launch -m leanbert.training.finetune ...`) is
`leanbert-finetune ...`."""

import sys

from ..commands.finetune import main

if __name__ == "__main__":
    sys.exit(main())
