"""transformers' pipelines on every architecture (a tiny model saved with the real MiniLM tokenizer): each task's
pipeline runs, and its output is the model's own computation on the same text. (transformers 5 removed the
question-answering pipeline; the QA head is tested in test_modeling.py.)"""

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from conftest import ARCHITECTURES, model_class, real_minilm_path, tiny_config

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(real_minilm_path())


def saved(arch, head, tokenizer, folder, **fields):
    torch.manual_seed(0)
    config = tiny_config(arch, vocab_size=tokenizer.vocab_size, initializer_range=0.2, **fields)
    model = model_class(arch, head)(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_task_pipeline_runs_the_model(arch, tokenizer, tmp_path):
    inputs = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        encoder = saved(arch, "Model", tokenizer, tmp_path / "base")
        features = pipeline("feature-extraction", model=str(tmp_path / "base"))(TEXT)
        torch.testing.assert_close(torch.tensor(features[0]), encoder(**inputs).last_hidden_state[0])

        classifier = saved(arch, "ForSequenceClassification", tokenizer, tmp_path / "cls", num_labels=3)
        [scores] = pipeline("text-classification", model=str(tmp_path / "cls"), top_k=None)([TEXT])
        expected = classifier(**inputs).logits.softmax(-1)[0]
        got = {entry["label"]: entry["score"] for entry in scores}
        assert got == pytest.approx({classifier.config.id2label[i]: p for i, p in enumerate(expected.tolist())},
                                    abs=1e-5)

        tagger = saved(arch, "ForTokenClassification", tokenizer, tmp_path / "tok", num_labels=2)
        tags = pipeline("token-classification", model=str(tmp_path / "tok"))(TEXT)
        best = tagger(**inputs).logits.softmax(-1)[0, 1:-1].max(-1)  # without [CLS] and [SEP]
        assert [tag["score"] for tag in tags] == pytest.approx(best.values.tolist(), abs=1e-5)

        mlm = saved(arch, "ForMaskedLM", tokenizer, tmp_path / "mlm")
        masked = f"The quick brown {tokenizer.mask_token} jumps over the lazy dog."
        fills = pipeline("fill-mask", model=str(tmp_path / "mlm"), top_k=3)(masked)
        batch = tokenizer(masked, return_tensors="pt")
        position = batch["input_ids"][0].tolist().index(tokenizer.mask_token_id)
        top = mlm(**batch).logits[0, position].softmax(-1).topk(3)
        assert [fill["token"] for fill in fills] == top.indices.tolist()
