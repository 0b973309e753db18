"""`leanbert-finetune`: fine-tune BERT or a leanbert model on a GLUE task, or on your own files or dataset
(sequence classification, regression, multi-label, token classification)."""

import json
import sys

from ..training import TASKS, finetune, process_state
from .cli import ArgumentParser, positive_int, run
from .hub_arguments import add_hub_arguments, check_hub_arguments, push_output
from .training_arguments import add_training_arguments, training_kwargs


def columns(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="leanbert-finetune",
        description="Fine-tune a checkpoint (BERT, converted or pretrained leanbert) on a GLUE task, or on your own "
                    "labelled files or dataset. Runs unchanged on a CPU, one GPU or several: accelerate launch -m "
                    "leanbert.commands.finetune ...")
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id) to start from")
    parser.add_argument("--task", help=f"a GLUE task with --data-dir ({', '.join(TASKS)}); token-classification for "
                                       "words and tags; leave out for sequence classification or regression")
    data = parser.add_argument_group("data (one of --data-dir, --train-file, --dataset-name)")
    data.add_argument("--data-dir", help="GLUE folder with one sub-folder of TSV files per task")
    data.add_argument("--train-file", help="CSV, TSV or JSON lines; CoNLL or JSON lines for token classification")
    data.add_argument("--validation-file", help="as --train-file")
    data.add_argument("--test-file", help="as --train-file (labels not needed): its predictions go to "
                                          "predictions.tsv")
    data.add_argument("--dataset-name", help="a dataset datasets.load_dataset reads (Hub id, local folder) or a "
                                             "save_to_disk folder")
    data.add_argument("--dataset-config", help="the dataset's configuration")
    data.add_argument("--train-split", default="train")
    data.add_argument("--validation-split-name", default="validation")
    data.add_argument("--test-split", help="a split to predict (predictions.tsv)")
    data.add_argument("--text-columns", type=columns,
                      help="a[,b]: one text or a pair (default: sentence1,sentence2, else the first two columns "
                           "other than the label; tokens for token classification)")
    data.add_argument("--label-column", help="default label (tags for token classification)")
    data.add_argument("--label-all-tokens", action="store_true",
                      help="token classification: tag every sub-word of a word, not only the first")
    data.add_argument("--cache-dir", help="where datasets caches the tables and their tokenisation (default: its own)")
    parser.add_argument("--validation-split", type=float,
                        help="hold out this fraction of train for validation (where there is no validation data)")
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
                       train_file=args.train_file, validation_file=args.validation_file, test_file=args.test_file,
                       dataset_name=args.dataset_name, dataset_config=args.dataset_config,
                       train_split=args.train_split, validation_split_name=args.validation_split_name,
                       test_split=args.test_split, text_columns=args.text_columns, label_column=args.label_column,
                       label_all_tokens=args.label_all_tokens, cache_dir=args.cache_dir,
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
