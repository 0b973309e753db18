"""The options every training command shares (`leanbert-pretrain`, `leanbert-finetune`), named as transformers'
example scripts name them, and their translation into `TrainingSettings`."""

import argparse

from .cli import non_negative_float, positive_float, positive_int, seed


def add_training_arguments(parser: argparse.ArgumentParser, *, batch_size: int, learning_rate: float,
                           weight_decay: float, warmup_ratio: float) -> None:
    group = parser.add_argument_group("training")
    length = group.add_mutually_exclusive_group()
    length.add_argument("--max-train-steps", type=positive_int, help="optimizer steps (overrides --num-train-epochs)")
    length.add_argument("--num-train-epochs", type=positive_float, help="passes over the training data")
    group.add_argument("--per-device-batch-size", type=positive_int, default=batch_size,
                       help=f"samples per process and micro-batch (default {batch_size})")
    group.add_argument("--gradient-accumulation-steps", type=positive_int, default=1)
    group.add_argument("--learning-rate", type=positive_float, default=learning_rate)
    group.add_argument("--weight-decay", type=non_negative_float, default=weight_decay,
                       help="AdamW weight decay; none on biases and LayerNorm weights")
    group.add_argument("--lr-scheduler", choices=("linear", "cosine", "constant_with_warmup"), default="linear")
    group.add_argument("--warmup-ratio", type=non_negative_float, default=warmup_ratio,
                       help="fraction of the steps spent warming the learning rate up")
    group.add_argument("--max-grad-norm", type=non_negative_float, default=1.0, help="0 disables clipping")
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                       help="fp16 needs a GPU; bf16 runs on CPUs too")
    group.add_argument("--eval-every", type=positive_int, help="evaluate every N steps (default: at the end)")
    group.add_argument("--checkpoint-every", type=positive_int, help="save a checkpoint every N steps")
    group.add_argument("--checkpoint-dir",
                       help="folder of its own for checkpoints (default: <output>.<task>-checkpoints)")
    group.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    group.add_argument("--seed", type=seed, default=42)
    group.add_argument("--max-train-samples", type=positive_int,
                       help="train on the first N examples only (quick runs, as in transformers' example scripts)")
    group.add_argument("--max-eval-samples", type=positive_int, help="evaluate on the first N examples only")
    parser.add_argument("--force", action="store_true", help="replace an output folder that leanbert wrote before")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read a model's pytorch_model.bin (pickle can run code: only for files you trust)")


def training_kwargs(args: argparse.Namespace, default_epochs: float) -> dict:
    return {"steps": args.max_train_steps, "epochs": None if args.max_train_steps else
            (args.num_train_epochs or default_epochs), "batch_size": args.per_device_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay, "scheduler": args.lr_scheduler, "warmup_ratio": args.warmup_ratio,
            "max_grad_norm": args.max_grad_norm, "mixed_precision": args.mixed_precision,
            "eval_every": args.eval_every, "max_train_samples": args.max_train_samples,
            "max_eval_samples": args.max_eval_samples, "checkpoint_every": args.checkpoint_every, "seed": args.seed,
            "checkpoint_dir": args.checkpoint_dir, "resume": args.resume, "force": args.force,
            "allow_pickle": args.allow_pickle}
