"""`leanbert-heal`: distil a converted model from its BERT source on unlabelled text."""

import argparse
import json
import sys

from ..conversion.source import ConversionError
from .distill import heal


def add_healing_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The healing settings, shared by `leanbert-heal` and `leanbert-convert --heal` (there with `heal-` names)."""
    parser.add_argument(f"--{prefix}steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument(f"--{prefix}batch-size", type=int, default=16)
    parser.add_argument(f"--{prefix}learning-rate", type=float, default=2e-4)
    parser.add_argument(f"--{prefix}train", choices=("converted", "all"), default="converted",
                        help="train only the parameters the conversion approximated (default) or all")
    parser.add_argument(f"--{prefix}objective", choices=("all-layers", "last"), default="all-layers",
                        help="match the teacher's hidden states at every layer (default) or the last only")
    parser.add_argument(f"--{prefix}attention-weight", type=float, default=0.0,
                        help="weight of the KL term that matches the teacher's attention distributions (default 0: "
                             "hidden states and sentence embedding only)")
    parser.add_argument(f"--{prefix}mixed-precision", choices=("no", "fp16", "bf16"), default="no")


def healing_kwargs(args: argparse.Namespace, prefix: str = "") -> dict:
    prefix = prefix.replace("-", "_")
    names = ("steps", "batch_size", "learning_rate", "train", "objective", "attention_weight", "mixed_precision")
    return {name: getattr(args, prefix + name) for name in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="leanbert-heal",
        description="Distil a model converted by leanbert-convert from its BERT source on unlabelled text. Runs "
                    "unchanged on CPU, one GPU or several (accelerate launch -m leanbert.healing ...).")
    parser.add_argument("--teacher", required=True, help="the BERT checkpoint the student was converted from")
    parser.add_argument("--student", required=True, help="folder written by leanbert-convert")
    parser.add_argument("--text", required=True, help="text file (one passage per line) or folder of .txt files")
    parser.add_argument("--output", required=True, help="folder for the healed model")
    add_healing_arguments(parser)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--checkpoint-dir", help="default: <output>.heal-checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report = heal(args.teacher, args.student, args.text, args.output, checkpoint_every=args.checkpoint_every,
                      checkpoint_dir=args.checkpoint_dir, resume=args.resume, force=args.force, seed=args.seed,
                      **healing_kwargs(args))
    except ConversionError as error:
        print(f"leanbert-heal: error: {error}", file=sys.stderr)
        return 2
    healing = report["healing"]
    print(json.dumps({key: healing[key] for key in ("fidelity_before", "fidelity_after", "seconds", "final_loss")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
