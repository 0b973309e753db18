"""`leanbert-heal`: distil a converted model from its BERT source on unlabelled text."""

import argparse
import json
import sys

from ..healing import heal
from ..training import process_state
from .cli import ArgumentParser, non_negative_float, positive_float, positive_int, run, seed
from .hub_arguments import add_hub_arguments, check_hub_arguments, push_output


def add_healing_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The healing settings, shared by `leanbert-heal` and `leanbert-convert --heal` (there with `heal-` names)."""
    parser.add_argument(f"--{prefix}steps", type=positive_int, default=400, help="optimizer steps (default 400)")
    parser.add_argument(f"--{prefix}batch-size", type=positive_int, default=16)
    parser.add_argument(f"--{prefix}learning-rate", type=positive_float, default=2e-4)
    parser.add_argument(f"--{prefix}train", choices=("converted", "all"), default="converted",
                        help="train only the parameters the conversion approximated (default) or all")
    parser.add_argument(f"--{prefix}objective", choices=("all-layers", "last"), default="all-layers",
                        help="match the teacher's hidden states at every layer (default) or the last only")
    parser.add_argument(f"--{prefix}attention-weight", type=non_negative_float, default=0.0,
                        help="weight of the KL term that matches the teacher's attention distributions (default 0: "
                             "hidden states and sentence embedding only)")
    parser.add_argument(f"--{prefix}mixed-precision", choices=("no", "fp16", "bf16"), default="no")


def healing_kwargs(args: argparse.Namespace, prefix: str = "") -> dict:
    prefix = prefix.replace("-", "_")
    names = ("steps", "batch_size", "learning_rate", "train", "objective", "attention_weight", "mixed_precision")
    return {name: getattr(args, prefix + name) for name in names}


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="leanbert-heal",
        description="Distil a model converted by leanbert-convert from its BERT source on unlabelled text. Runs "
                    "unchanged on CPU, one GPU or several (accelerate launch -m leanbert.commands.heal ...).")
    parser.add_argument("--teacher", required=True, help="the BERT checkpoint the student was converted from")
    parser.add_argument("--student", required=True, help="folder written by leanbert-convert")
    parser.add_argument("--text", required=True, help="text file (one passage per line) or folder of .txt files")
    parser.add_argument("--output", required=True, help="folder for the healed model")
    add_healing_arguments(parser)
    parser.add_argument("--checkpoint-every", type=positive_int, default=100)
    parser.add_argument("--checkpoint-dir",
                        help="folder of its own for checkpoints (default: <output>.heal-checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an output folder that leanbert wrote before")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read the teacher's and student's pytorch_model.bin (pickle can run code: only "
                             "for files you trust)")
    parser.add_argument("--seed", type=seed, default=0)
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def heal_command(argv=None) -> int:
    args = parse_args(argv)
    check_hub_arguments(args)
    report = heal(args.teacher, args.student, args.text, args.output, checkpoint_every=args.checkpoint_every,
                  checkpoint_dir=args.checkpoint_dir, resume=args.resume, force=args.force,
                  allow_pickle=args.allow_pickle, seed=args.seed, **healing_kwargs(args))
    healing = report["healing"]
    summary = {key: healing[key] for key in ("fidelity_before", "fidelity_after", "seconds", "final_loss")}
    if pushed := push_output(args, args.output):
        summary["hub"] = pushed
    if process_state().is_main_process:  # under a launcher, once
        print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    return run("leanbert-heal", heal_command, argv)


if __name__ == "__main__":
    sys.exit(main())
