"""`leanbert-pretrain`: masked-LM pretraining of BERT, SymBert, SharedBert or Shatter on plain text."""

import json
import sys

from ..training import MODEL_TYPES, pretrain, process_state
from .cli import ArgumentParser, positive_float, positive_int, run
from .hub_arguments import add_hub_arguments, check_hub_arguments, push_output
from .training_arguments import add_training_arguments, training_kwargs


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="leanbert-pretrain",
        description="Masked-LM pretraining from scratch (--model-type) or from a checkpoint (--model). Runs unchanged "
                    "on a CPU, one GPU or several: accelerate launch -m leanbert.commands.pretrain ...")
    model = parser.add_argument_group("model")
    model.add_argument("--model-type", help=f"pretrain from scratch: {', '.join(MODEL_TYPES)}")
    model.add_argument("--config-overrides", default="",
                       help="key=value,... set on a fresh config, e.g. num_hidden_layers=4,hidden_size=256")
    model.add_argument("--model", help="continue from this checkpoint folder instead")
    model.add_argument("--tokenizer", help="tokenizer folder (default: the --model's own)")
    data = parser.add_argument_group("data")
    data.add_argument("--train-file", required=True, help="text, one passage per line, or a folder of .txt files")
    data.add_argument("--validation-file", help="held-out text (default: --validation-split of the training blocks)")
    data.add_argument("--validation-split", type=float, default=0.05,
                      help="fraction of the training blocks held out when there is no --validation-file (default 0.05)")
    data.add_argument("--max-seq-length", type=positive_int, default=128, help="tokens per packed block (default 128)")
    data.add_argument("--mlm-probability", type=positive_float, default=0.15)
    data.add_argument("--whole-word-masking", action="store_true", help="mask every token of a chosen word")
    data.add_argument("--cache-dir", help="where datasets caches the tokenised text (default: its own cache)")
    parser.add_argument("--output", required=True, help="folder for the pretrained model")
    add_training_arguments(parser, batch_size=32, learning_rate=5e-4, weight_decay=0.01, warmup_ratio=0.06)
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def pretrain_command(argv=None) -> int:
    args = parse_args(argv)
    check_hub_arguments(args)
    report = pretrain(args.output, train_file=args.train_file, model_type=args.model_type,
                      config_overrides=args.config_overrides, model=args.model, tokenizer=args.tokenizer,
                      validation_file=args.validation_file, validation_split=args.validation_split,
                      max_seq_length=args.max_seq_length, mlm_probability=args.mlm_probability,
                      whole_word_masking=args.whole_word_masking, cache_dir=args.cache_dir,
                      **training_kwargs(args, default_epochs=1))
    pushed = push_output(args, args.output)
    if process_state().is_main_process:
        summary = {key: report[key] for key in ("steps", "samples", "tokens", "seconds", "final_loss", "validation")}
        print(json.dumps({**summary, **({"hub": pushed} if pushed else {})}, indent=2))
    return 0


def main(argv=None) -> int:
    return run("leanbert-pretrain", pretrain_command, argv)


if __name__ == "__main__":
    sys.exit(main())
