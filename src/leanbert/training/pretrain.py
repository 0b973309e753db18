"""`python -m leanbert.training.pretrain ...` (and `accelerate launch -m leanbert.training.pretrain ...`) is
`leanbert-pretrain ...`."""

import sys

from ..commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
