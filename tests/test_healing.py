"""Healing by distillation: it improves fidelity, resumes exactly, and refuses mismatched teacher and student."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel

import leanbert
from conftest import real_minilm_path
from leanbert.conversion import convert
from leanbert.common.errors import LeanbertError
from leanbert.common.passages import read_passages
from leanbert.healing import HealingError, heal
from leanbert.healing.distill import attention_kl


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A small random BERT (the teacher), its Shatter warm start (lossy, so healing has work to do) and text."""
    root = tmp_path_factory.mktemp("healing")
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, initializer_range=0.2)).save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    text = root / "text.txt"
    text.write_text("\n".join(read_passages()[0][:96]))
    convert(str(root / "teacher"), "shatter", root / "student", calibration_text=text, refine_steps=0)
    return root


def run_heal(root, output, **kwargs):
    settings = dict(steps=8, batch_size=8, max_length=64, learning_rate=3e-3, checkpoint_every=4)
    return heal(str(root / "teacher"), root / "student", root / "text.txt", output, **{**settings, **kwargs})


def test_healing_improves_fidelity_and_updates_the_report(converted, tmp_path):
    report = run_heal(converted, tmp_path / "healed", train="all", steps=12)
    healing = report["healing"]
    # the fidelities reported are those of the student folder and of the written model, recomputed: the cosine
    # between the teacher's and the model's mean-pooled last hidden states of the held-out passages (cut at the 64
    # tokens healing ran with); and healing raised it
    tokenizer = AutoTokenizer.from_pretrained(converted / "teacher")
    heldout = tokenizer(read_passages(bundled="heldout.txt")[0], max_length=64, truncation=True, padding=True,
                        return_tensors="pt")
    weights = heldout["attention_mask"].unsqueeze(-1).float()
    models = {"teacher": BertModel.from_pretrained(converted / "teacher"),
              "fidelity_before": leanbert.ShatterModel.from_pretrained(converted / "student"),
              "fidelity_after": leanbert.ShatterModel.from_pretrained(tmp_path / "healed")}
    with torch.no_grad():
        pooled = {name: (model.eval()(**heldout).last_hidden_state * weights).sum(1) / weights.sum(1)
                  for name, model in models.items()}
    for name in ("fidelity_before", "fidelity_after"):
        cosines = torch.nn.functional.cosine_similarity(pooled["teacher"], pooled[name], dim=-1)
        assert healing[name]["mean_cosine"] == pytest.approx(cosines.mean().item(), abs=1e-4), name
        assert healing[name]["min_cosine"] == pytest.approx(cosines.min().item(), abs=1e-4), name
    assert healing["fidelity_after"]["mean_cosine"] > healing["fidelity_before"]["mean_cosine"]
    saved = json.loads((tmp_path / "healed" / "conversion_report.json").read_text())
    assert saved["healing"] == healing and saved["fidelity"] == report["fidelity"]  # the pre-healing fidelity stays
    curve = json.loads((tmp_path / "healed" / "healing_curve.json").read_text())["train"]
    assert [point["step"] for point in curve] == list(range(1, 13)) and curve[-1]["loss"] < curve[0]["loss"]
    assert [point["samples"] for point in curve] == [8 * step for step in range(1, 13)]
    assert (tmp_path / "healed" / "healing_curve.png").stat().st_size > 1000
    assert not (tmp_path / "healed.heal-checkpoints").exists(), "checkpoints are removed once healing finishes"
    assert type(leanbert.ShatterModel.from_pretrained(tmp_path / "healed")) is leanbert.ShatterModel


def test_attention_kl_is_zero_on_the_teacher_and_matches_a_direct_sum():
    generator = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 4, 5, 5, generator=generator).softmax(-1) for _ in range(2)]
    student = [torch.randn(2, 4, 5, 5, generator=generator).softmax(-1) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert attention_kl(teacher, teacher, mask).abs() < 1e-6
    expected = sum(
        sum((p[b, h, i] * (p[b, h, i] / q[b, h, i]).log()).sum() for h in range(4)) / 4
        for p, q in zip(teacher, student) for b in range(2) for i in range(5) if mask[b, i]
    ) / (mask.sum() * 2)
    torch.testing.assert_close(attention_kl(teacher, student, mask), expected)
    one_head = [q.mean(1, keepdim=True) for q in teacher]  # a Shatter student is matched to the head mean
    assert attention_kl(teacher, one_head, mask).abs() < 1e-6


def test_attention_objective_heals(converted, tmp_path):
    report = run_heal(converted, tmp_path / "healed", train="all", steps=12, attention_weight=1.0)
    healing = report["healing"]
    assert healing["attention_weight"] == 1.0
    assert healing["fidelity_after"]["mean_cosine"] > healing["fidelity_before"]["mean_cosine"]
    with pytest.raises(HealingError, match="attention_weight must be a finite number >= 0, got -1"):
        run_heal(converted, tmp_path / "other", attention_weight=-1)


def test_attention_term_adds_the_kl_of_the_attention_distributions(converted, tmp_path):
    """The first step's loss with `attention_weight=w` exceeds the plain loss by w · KL(teacher ‖ student), the KL
    recomputed here from the two models' eager attentions on the same first batch (a one-headed Shatter student
    against the teacher's mean over heads)."""
    first = {w: run_heal(converted, tmp_path / f"w{w}", steps=1, attention_weight=w)["healing"]["final_loss"]
             for w in (0.0, 2.0)}
    passages = read_passages(converted / "text.txt", limit=8, min_chars=40)[0]
    order = torch.randperm(len(passages), generator=torch.Generator().manual_seed(0)).tolist()
    tokenizer = AutoTokenizer.from_pretrained(converted / "student")
    batch = tokenizer([passages[i] for i in order], max_length=64, truncation=True, padding="max_length",
                      return_tensors="pt")
    teacher = BertModel.from_pretrained(converted / "teacher", attn_implementation="eager").eval()
    student = leanbert.ShatterModel.from_pretrained(converted / "student", attn_implementation="eager").eval()
    with torch.no_grad():
        p_layers = teacher(**batch, output_attentions=True).attentions
        q_layers = student(**batch, output_attentions=True).attentions
    real = batch["attention_mask"].bool()
    kl = torch.stack([(torch.xlogy(p.mean(1), p.mean(1)) - p.mean(1) * q[:, 0].clamp_min(1e-12).log()).sum(-1)[real]
                      .mean() for p, q in zip(p_layers, q_layers)]).mean()
    assert kl > 0.01
    assert first[2.0] - first[0.0] == pytest.approx(2.0 * kl.item(), rel=1e-3)


def test_only_converted_parameters_train_by_default(converted, tmp_path):
    run_heal(converted, tmp_path / "healed", steps=4)
    before = load_file(converted / "student" / "model.safetensors")
    after = load_file(tmp_path / "healed" / "model.safetensors")
    fitted = set(json.loads((converted / "student" / "conversion_report.json").read_text())["fitted_parameters"])
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= fitted


def test_interrupted_healing_resumes_to_the_same_result(converted, tmp_path):
    reference = run_heal(converted, tmp_path / "straight")

    def interrupt(step, loss):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_heal(converted, tmp_path / "resumed", callback=interrupt)
    assert not (tmp_path / "resumed").exists(), "the output appears only when healing finishes"
    assert sorted(p.name for p in (tmp_path / "resumed.heal-checkpoints").iterdir()) == [
        ".leanbert-checkpoints.json", "step_4"]
    resumed = run_heal(converted, tmp_path / "resumed", resume=True)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    for name, tensor in load_file(tmp_path / "resumed" / "model.safetensors").items():
        torch.testing.assert_close(tensor, straight[name], atol=1e-6, rtol=1e-5)
    assert resumed["healing"]["final_loss"] == pytest.approx(reference["healing"]["final_loss"], rel=1e-5)


def test_mismatched_tokenizer_is_refused_before_training(converted, tmp_path):
    other = tmp_path / "other_teacher"
    tokenizer = AutoTokenizer.from_pretrained(converted / "teacher")
    tokenizer.add_tokens(["leanbertium"])
    BertModel.from_pretrained(converted / "teacher").save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(LeanbertError, match="its ids would fall outside the embeddings"):
        heal(str(other), converted / "student", converted / "text.txt", tmp_path / "out", steps=2)
    assert not (tmp_path / "out").exists()


def test_a_cased_teacher_for_an_uncased_student_is_refused_naming_the_normalizer(converted, tmp_path):
    """The same weights and vocabulary, but a tokenizer that keeps case: the teacher would read other tokens."""
    teacher = tmp_path / "cased_teacher"
    BertModel.from_pretrained(converted / "teacher").save_pretrained(teacher)
    AutoTokenizer.from_pretrained(converted / "teacher").save_pretrained(teacher)
    config = json.loads((teacher / "tokenizer_config.json").read_text())
    (teacher / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    with pytest.raises(HealingError, match=r"tokenizers differ in their normalizer \(teacher .*\"lowercase\":false.*"
                                           r"student .*\"lowercase\":true"):
        heal(str(teacher), converted / "student", converted / "text.txt", tmp_path / "out", steps=2)
    assert not (tmp_path / "out").exists()


def test_a_healing_text_of_a_few_passages_repeated_is_refused(converted, tmp_path):
    text = tmp_path / "repeated.txt"
    text.write_text("The first of two passages, each of them written out thirty-two times over.\n"
                    "The second of the two passages, repeated just as often as the first one.\n" * 32)
    with pytest.raises(HealingError, match="holds 2 distinct passages of 40 characters or more; healing needs at "
                                           "least 16"):
        heal(str(converted / "teacher"), converted / "student", text, tmp_path / "out", steps=4, batch_size=8)
    assert not (tmp_path / "out").exists()


def test_student_not_converted_from_bert_is_refused(converted, tmp_path):
    student = tmp_path / "scratch"
    leanbert.SymBertModel(leanbert.SymBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=48)).save_pretrained(student)
    with pytest.raises(HealingError, match="was not converted from a BERT"):
        heal(str(converted / "teacher"), student, converted / "text.txt", tmp_path / "out", steps=2)


def test_heal_cli_reports_errors_in_one_line(converted, tmp_path):
    result = subprocess.run([sys.executable, "-m", "leanbert.commands.heal", "--teacher", converted / "teacher",
                             "--student", converted / "teacher", "--text", converted / "text.txt", "--output",
                             tmp_path / "out"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("leanbert-heal: error: student")
    assert "'bert' model; healing takes a leanbert model" in result.stderr


def test_heal_cli_prints_its_summary_from_the_main_process_only(monkeypatch, tmp_path, capsys):
    """Under a launcher every rank runs the command: the summary is printed once, by the main process."""
    from types import SimpleNamespace

    from leanbert.commands import heal as heal_command

    report = {"healing": {"fidelity_before": {}, "fidelity_after": {}, "seconds": 1.0, "final_loss": 0.5}}
    monkeypatch.setattr(heal_command, "heal", lambda *args, **kwargs: report)
    args = ["--teacher", "t", "--student", "s", "--text", "x.txt", "--output", str(tmp_path / "out")]
    for main_process, printed in ((False, ""), (True, '"final_loss": 0.5')):
        monkeypatch.setattr(heal_command, "process_state", lambda: SimpleNamespace(is_main_process=main_process))
        assert heal_command.main(args) == 0
        out = capsys.readouterr().out
        assert printed in out and (printed or out == "")
