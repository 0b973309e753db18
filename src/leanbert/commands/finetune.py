"""`leanbert-finetune`: fine-tune BERT or a leanbert model on a GLUE task."""

import json
import sys

from ..training import TASKS, finetune, process_state
from .cli import ArgumentParser, positive_int, run
from .hub_arguments import add_hub_arguments, check_hub_arguments, push_output
from .training_arguments import add_training_arguments, training_kwargs


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="leanbert-finetune",
        description="Fine-tune a checkpoint (BERT, converted or pretrained leanbert) on a GLUE task. Runs unchanged "
                    "on a CPU, one GPU or several: accelerate launch -m leanbert.commands.finetune ...")
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id) to start from")
    parser.add_argument("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    parser.add_argument("--data-dir", required=True, help="GLUE folder with one sub-folder of TSV files per task")
    parser.add_argument("--validation-split", type=float,
                        help="hold out this fraction of train for validation (needed where the task has no dev file)")
    parser.add_argument("--max-seq-length", type=positive_int,
                        help="tokens per input (default 128, or the model's maximum where it is smaller)")
    parser.add_argument("--output", required=True, help="folder for the fine-tuned model and results.json")
    add_training_arguments(parser, batch_size=32, learning_rate=2e-5, weight_decay=0.01, warmup_ratio=0.1)
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def finetune_command(argv=None) -> int:
    args = parse_args(argv)
    check_hub_arguments(args)
    results = finetune(args.output, model=args.model, task=args.task, data_dir=args.data_dir,
                       validation_split=args.validation_split, max_seq_length=args.max_seq_length,
                       **training_kwargs(args, default_epochs=3))
    pushed = push_output(args, args.output)
    if process_state().is_main_process:
        print(json.dumps({"task": results["task"], "metrics": results["metrics"], "best": results["best"],
                          "seconds": results["seconds"], **({"hub": pushed} if pushed else {})}, indent=2))
    return 0


def main(argv=None) -> int:
    return run("leanbert-finetune", finetune_command, argv)


if __name__ == "__main__":
    sys.exit(main())
