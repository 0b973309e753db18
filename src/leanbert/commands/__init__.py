"""The command lines, the top layer: argument parsing and composition on top of the public APIs of conversion,
healing, training, export and publishing. `leanbert.commands.<name>.main(argv)` is the console script
`leanbert-<name>` (convert, heal, pretrain, finetune, export) and `python -m leanbert.commands.<name>` runs it too
(as does `accelerate launch -m leanbert.commands.<name>`); each runs through `cli.run`: one line per failure, exit
code 2 for bad input, 130 for Ctrl-C or SIGTERM."""
