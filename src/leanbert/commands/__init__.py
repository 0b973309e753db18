"""The command lines (`leanbert-convert`, `leanbert-heal`): argument parsing and composition on top of the
conversion and healing packages, run through `leanbert.common.cli.run` (one line per failure, exit code 2)."""
