"""`leanbert-convert`: convert a BERT checkpoint into a leanbert architecture from the command line."""

import argparse
import json
import sys

from ..healing.cli import add_healing_arguments, healing_kwargs
from ..healing.distill import heal
from .convert import TARGETS, convert
from .source import ConversionError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leanbert-convert",
        description="Convert a BERT checkpoint (BertModel or BertFor*) into SymBert, SharedBert or Shatter, calibrated on "
                    "real text, and report how close the result is to the source.",
    )
    parser.add_argument("--source", required=True, help="BERT checkpoint: a local folder or a Hub model id")
    parser.add_argument("--to", required=True, choices=sorted(TARGETS), help="target architecture")
    parser.add_argument("--output", required=True, help="folder to write the converted model to")
    parser.add_argument("--calibration-text", help="text file, one passage per line (default: bundled "
                                                   "public-domain passages)")
    parser.add_argument("--refine-steps", type=int, default=300,
                        help="per-layer refinement steps after the closed-form fit (0 = closed form only)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per calibration passage")
    parser.add_argument("--attention-mode", default="pairwise", choices=("pairwise", "symmetric"),
                        help="SymBert scores: learned pairwise matrix (default) or plain symmetric")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read pytorch_model.bin weights (pickle can run code: only for sources you trust)")
    parser.add_argument("--seed", type=int, default=0)
    healing = parser.add_argument_group("healing", "distil the converted model from its source (leanbert-heal)")
    healing.add_argument("--heal", action="store_true", help="heal after converting; needs --heal-text")
    healing.add_argument("--heal-text", help="text file (one passage per line) or folder of .txt files")
    add_healing_arguments(healing, prefix="heal-")
    args = parser.parse_args(argv)
    if args.heal and not args.heal_text:
        parser.error("--heal needs --heal-text")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = convert(args.source, args.to, args.output, calibration_text=args.calibration_text,
                         refine_steps=args.refine_steps, max_length=args.max_length,
                         attention_mode=args.attention_mode, force=args.force, allow_pickle=args.allow_pickle,
                         seed=args.seed)
        if args.heal:
            report = heal(args.source, args.output, args.heal_text, args.output, force=True, seed=args.seed,
                          allow_pickle=args.allow_pickle, **healing_kwargs(args, prefix="heal-"))
    except ConversionError as error:
        print(f"leanbert-convert: error: {error}", file=sys.stderr)
        return 2
    summary = {"output": args.output, "parameters": report["parameters"], "fidelity": report["fidelity"],
               "note": report["note"]}
    if "healing" in report:
        summary["fidelity_after_healing"] = report["healing"]["fidelity_after"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
