"""`leanbert-convert`: convert a BERT checkpoint into a leanbert architecture from the command line, optionally
healing it in the same run (`--heal`): both are checked before either starts, and the output is published once."""

import argparse
import json
import sys

from ..architectures import CONVERTIBLE
from ..common.output import SafeOutput
from ..conversion import REFINE_STEPS, Conversion
from ..healing import Healing
from ..training import TrainingRun
from .cli import ArgumentParser, non_negative_int, positive_int, run, seed
from .heal import add_healing_arguments, healing_kwargs
from .hub_arguments import add_hub_arguments, check_hub_arguments, push_output


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="leanbert-convert",
        description="Convert a BERT checkpoint (BertModel or BertFor*) into a leanbert architecture, "
                    "calibrated on real text, and report how close the result is to the source.",
    )
    parser.add_argument("--source", required=True, help="BERT checkpoint: a local folder or a Hub model id")
    parser.add_argument("--to", required=True, choices=sorted(CONVERTIBLE),
                        help="target architecture, by its model_type")
    parser.add_argument("--output", required=True, help="folder to write the converted model to")
    parser.add_argument("--calibration-text", help="text file (one passage per line) or folder of .txt files "
                                                   "(default: bundled public-domain passages)")
    parser.add_argument("--calibration-passages", type=positive_int, default=256,
                        help="passages sampled (with --seed) from the calibration text; memory grows with it "
                             "(default 256)")
    parser.add_argument("--refine-steps", type=non_negative_int, default=REFINE_STEPS,
                        help=f"per-layer refinement steps after the closed-form fit (0 = closed form only; default "
                             f"{REFINE_STEPS})")
    parser.add_argument("--max-length", type=positive_int, default=128, help="tokens per calibration passage")
    parser.add_argument("--attention-mode", choices=("pairwise", "symmetric"),
                        help="sym_bert's scores: learned pairwise matrix (its default) or plain symmetric")
    parser.add_argument("--keep-attention-dropout", action="store_true",
                        help="keep the source's attention-probability dropout even where it makes the converted model "
                             "far more fragile than the source (by default it is then written as 0.0; the report "
                             "says why)")
    parser.add_argument("--force", action="store_true", help="replace an output folder that leanbert wrote before")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read pytorch_model.bin weights (pickle can run code: only for sources you trust)")
    parser.add_argument("--seed", type=seed, default=0)
    healing = parser.add_argument_group("healing", "distil the converted model from its source (leanbert-heal)")
    healing.add_argument("--heal", action="store_true", help="heal after converting; needs --heal-text")
    healing.add_argument("--heal-text", help="text file (one passage per line) or folder of .txt files")
    add_healing_arguments(healing, prefix="heal-")
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    if args.heal and not args.heal_text:
        parser.error("--heal needs --heal-text")
    if args.heal_text and not args.heal:
        parser.error("--heal-text is used only with --heal")
    return args


def convert_command(argv=None) -> int:
    args = parse_args(argv)
    check_hub_arguments(args)
    inputs = [("source", args.source), ("calibration text", args.calibration_text), ("healing text", args.heal_text)]
    inputs = [(name, path) for name, path in inputs if path is not None]
    healing = None
    if args.heal:
        healing_run = TrainingRun(args.output, inputs, command="leanbert-convert", task="heal", force=args.force)
        healing = Healing(args.source, None, args.heal_text, seed=args.seed, allow_pickle=args.allow_pickle,
                          **healing_kwargs(args, prefix="heal-"))
        healing.check_resume(healing_run.checkpoints, resume=False)
        target = healing_run.staged()
    else:
        target = SafeOutput(args.output, inputs=inputs, force=args.force, command="leanbert-convert")
    conversion = Conversion(args.source, args.to, calibration_text=args.calibration_text,
                            calibration_passages=args.calibration_passages, refine_steps=args.refine_steps,
                            max_length=args.max_length, attention_mode=args.attention_mode,
                            keep_attention_dropout=args.keep_attention_dropout, allow_pickle=args.allow_pickle,
                            seed=args.seed)
    with target as staging:
        report = conversion.write_to(staging)
        if healing is None:
            target.publish()
        else:  # published when the block ends
            healing.set_student(staging)
            report = healing.write_to(staging)
    summary = {"output": args.output, "parameters": report["parameters"], "fidelity": report["fidelity"],
               "note": report["note"]}
    if "healing" in report:
        summary["fidelity_after_healing"] = report["healing"]["fidelity_after"]
    if advice := report["dropout"].get("why") or report["dropout"].get("kept"):
        summary["attention_dropout"] = advice
    if pushed := push_output(args, args.output):
        summary["hub"] = pushed
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    return run("leanbert-convert", convert_command, argv)


if __name__ == "__main__":
    sys.exit(main())
