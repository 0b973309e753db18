"""Sentence embeddings are trained with sentence-transformers' own trainer, which leanbert does not wrap: a converted
sentence-transformers model trains with `SentenceTransformerTrainer` and a contrastive loss (in-batch negatives) on
the similar pairs among STS-B's first train pairs, its loss falls, and the saved model reloads, modules kept, with
leanbert and (trust_remote_code) without it."""

import math

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
try:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.losses import MultipleNegativesRankingLoss

from conftest import SHARED_DATA
from leanbert.conversion import convert
from test_sentence_transformers import module_names, without_leanbert

PAIRS, EPOCHS, BATCH = 300, 8, 16
SIMILAR = 3.0  # of STS-B's 0-5: the pairs kept as (anchor, positive)


def similar_pairs(count: int) -> Dataset:
    """The pairs scored at least SIMILAR among the first `count` STS-B train pairs."""
    lines = (SHARED_DATA / "glue" / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:count + 1]]
    a, b, score = header.index("sentence1"), header.index("sentence2"), header.index("score")
    kept = [row for row in rows if float(row[score]) >= SIMILAR]
    return Dataset.from_dict({"anchor": [r[a] for r in kept], "positive": [r[b] for r in kept]})


def ranking_loss(model: SentenceTransformer, pairs: Dataset) -> float:
    """MultipleNegativesRankingLoss (each anchor against the positives of its batch of BATCH, scale 20) over the
    pairs in order, from the model's embeddings: the training objective, measured without dropout."""
    anchors = model.encode(pairs["anchor"], convert_to_tensor=True, batch_size=64)
    positives = model.encode(pairs["positive"], convert_to_tensor=True, batch_size=64)
    losses = []
    for start in range(0, len(pairs), BATCH):
        a, p = anchors[start:start + BATCH], positives[start:start + BATCH]
        scores = 20 * torch.nn.functional.cosine_similarity(a[:, None], p[None], dim=-1)
        losses.append(torch.nn.functional.cross_entropy(scores, torch.arange(len(a)), reduction="sum"))
    return (sum(losses) / len(pairs)).item()


def test_a_converted_model_trains_with_sentence_transformers_trainer(st_source, tmp_path, one_torch_thread):
    """The tiny sentence-transformers model of the fixtures, converted to SymBert, trained without dropout (at this
    size and this few steps dropout's noise swamps what the in-batch loss can learn)."""
    converted = tmp_path / "converted"
    convert(str(st_source / "source"), "sym_bert", converted, calibration_text=st_source / "text.txt",
            refine_steps=0)
    model = SentenceTransformer(str(converted), config_kwargs={"hidden_dropout_prob": 0.0,
                                                               "attention_probs_dropout_prob": 0.0})
    assert type(model[0].auto_model).__name__ == "SymBertModel"
    pairs = similar_pairs(PAIRS)
    assert len(pairs) > 100
    before = ranking_loss(model, pairs)
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "trainer"), num_train_epochs=EPOCHS,
                                               per_device_train_batch_size=BATCH, learning_rate=1e-3,
                                               logging_steps=1, save_strategy="no", report_to=[], seed=0,
                                               use_cpu=True, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    steps = math.ceil(len(pairs) / BATCH)  # per epoch: the mean loss over the same pairs falls epoch by epoch
    assert len(logged) == EPOCHS * steps and sum(logged[-steps:]) < 0.85 * sum(logged[:steps]), logged
    after = ranking_loss(model, pairs)
    assert after < 0.85 * before, (before, after)

    saved = tmp_path / "trained"
    model.save(str(saved))
    reloaded = SentenceTransformer(str(saved))
    assert module_names(reloaded) == ["Transformer", "Pooling", "Normalize"] == module_names(model)
    assert type(reloaded[0].auto_model).__name__ == "SymBertModel"
    texts = pairs["anchor"][:5]
    expected = model.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(reloaded.encode(texts, convert_to_tensor=True), expected, atol=1e-5, rtol=0)
    setup, remote = without_leanbert(saved, texts, tmp_path)
    assert setup["modules"] == ["Transformer", "Pooling", "Normalize"]
    torch.testing.assert_close(remote, expected, atol=1e-5, rtol=0)
    assert ranking_loss(reloaded, pairs) == pytest.approx(after, abs=1e-4)
