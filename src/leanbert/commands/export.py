"""`leanbert-export`: write a SymBert or SharedBert model as the plain BERT that computes the same outputs."""

import argparse
import json
import sys

from ..export import export
from .cli import ArgumentParser, run
from .hub_arguments import add_hub_arguments, check_hub_arguments, push_output


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="leanbert-export",
        description="Write a SymBert or SharedBert model (any head) as the plain BERT that computes the same "
                    "outputs: it loads with transformers alone, 4.x or 5.x, without leanbert or remote code, and runs "
                    "wherever BERT runs, at BERT's cost.")
    parser.add_argument("--model", required=True, help="leanbert model: a local folder or a Hub model id")
    parser.add_argument("--output", required=True, help="folder to write the BERT model to")
    parser.add_argument("--force", action="store_true", help="replace an output folder that leanbert wrote before")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read pytorch_model.bin weights (pickle can run code: only for models you trust)")
    add_hub_arguments(parser)
    return parser.parse_args(argv)


def export_command(argv=None) -> int:
    args = parse_args(argv)
    check_hub_arguments(args)
    report = export(args.model, args.output, force=args.force, allow_pickle=args.allow_pickle)
    summary = {"output": args.output, "architecture": report["exported_architecture"],
               "max_abs_difference": report["check"]["max"], "parameters": report["parameters"],
               "inference_flops": {key: report["inference_flops"][key] for key in ("source", "exported", "ratio")}}
    if pushed := push_output(args, args.output):
        summary["hub"] = pushed
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    return run("leanbert-export", export_command, argv)


if __name__ == "__main__":
    sys.exit(main())
