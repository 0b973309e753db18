"""Bad input to `leanbert-convert` and `leanbert-heal`: one line naming the problem, exit code 2, and nothing lost.

Each case runs the real command in-process (`main(argv)`) on real files and checks, besides the message, that
every file under the test's folder is byte for byte what it was before (the user's data, the source, outputs).
"""

import hashlib
import importlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from conftest import fails_cleanly, snapshot
from leanbert.commands.convert import main as convert_main
from leanbert.commands.heal import main as heal_main
from leanbert.conversion import convert


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_bert, calibration_file):
    """A copy of the tiny BERT (the source), its SymBert conversion (the student), healing text and a good output."""
    root = tmp_path_factory.mktemp("bad_input")
    shutil.copytree(tiny_bert, root / "bert")
    shutil.copy(calibration_file, root / "text.txt")
    convert(str(root / "bert"), "sym_bert", root / "student", calibration_text=root / "text.txt", refine_steps=0)
    shutil.copytree(root / "student", root / "good_output")
    return root


def broken_source(root: Path, case: str) -> Path:
    """A copy of the source BERT with one defect."""
    folder = root / f"bert_{case}"
    shutil.copytree(root / "bert", folder)
    weights = folder / "model.safetensors"
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif case == "empty_weights":
        weights.write_bytes(b"")
    elif case == "missing_tensors":
        state = load_file(weights)
        save_file({k: v for k, v in state.items() if "layer.1.output.dense" not in k}, weights,
                  metadata={"format": "pt"})
    elif case == "empty_config":
        (folder / "config.json").write_text("{}")
    elif case == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    elif case == "tokenizer_config_only":  # transformers would build a 5-token stand-in from it
        for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    elif case == "big_tokenizer":
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.add_tokens(["leanbertium"])
        tokenizer.save_pretrained(folder)
    elif case == "no_pad_token":  # every command pads its batches
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.pad_token = None
        tokenizer.save_pretrained(folder)
    return folder


SOURCE_CASES = {
    "truncated": "cannot load the weights of source",
    "empty_weights": "cannot load the weights of source",
    "missing_tensors": "are incomplete: 2 tensors missing (bert.encoder.layer.1.output.dense.bias",
    "empty_config": "cannot read the config of source",
    "no_tokenizer": "has no tokenizer vocabulary",
    "tokenizer_config_only": "has no tokenizer vocabulary",
    "big_tokenizer": "its ids would fall outside the embeddings",
    "no_pad_token": "has no padding token",
}


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_a_broken_source_is_refused_before_any_work(work, case, capsys):
    source = broken_source(work, case)
    try:
        fails_cleanly(convert_main, ["--source", source, "--to", "sym_bert", "--output", work / "out"],
                      SOURCE_CASES[case], work, capsys)
    finally:
        shutil.rmtree(source)


CONVERT_CASES = {
    "max_length_zero": (["--max-length", "0"], "argument --max-length: must be a positive integer"),
    "max_length_beyond_positions": (["--max-length", "600"], "exceeds the source's max_position_embeddings 512"),
    "negative_refine": (["--refine-steps", "-1"], "argument --refine-steps: must be >= 0"),
    "seed_beyond_32_bits": (["--seed", "4294967296"], "argument --seed: must be in [0, 2**32 - 1]"),
    "no_passages": (["--calibration-passages", "0"], "argument --calibration-passages"),
    "one_line_calibration": (["--calibration-text", "{root}/one_line.txt"],
                             "too small for the fit: 1 distinct passages"),
    "two_lines_repeated": (["--calibration-text", "{root}/repeated.txt"], "too small for the fit: 2 distinct passages"),
    "undecodable_calibration": (["--calibration-text", "{root}/latin1.txt"], "is not UTF-8 text (line 2"),
    "missing_calibration": (["--calibration-text", "{root}/nowhere.txt"], "not found: no such file"),
    "heal_without_text": (["--heal"], "--heal needs --heal-text"),
    "missing_heal_text": (["--heal", "--heal-text", "{root}/nowhere.txt", "--force", "--output", "{root}/good_output"],
                          "healing text"),
    "heal_nan_rate": (["--heal", "--heal-text", "{root}/text.txt", "--heal-learning-rate", "nan"],
                      "argument --heal-learning-rate: must be a finite number > 0"),
    "output_is_a_parent_of_the_source": (["--output", "{root}", "--force"], "contains the source"),
    "output_is_a_file": (["--output", "{root}/text.txt", "--force"], "exists and is not a folder"),
    "force_over_user_files": (["--output", "{root}/user_folder", "--force"], "leanbert did not write"),
}


@pytest.mark.parametrize("case", sorted(CONVERT_CASES))
def test_convert_refuses_bad_settings_with_one_line(work, case, capsys):
    (work / "one_line.txt").write_text("A single passage of calibration text is far too little for any fit.\n")
    (work / "repeated.txt").write_text("The first of two passages, each written out thirty-two times.\n"
                                       "The second passage, just as often, which makes 64 lines of text.\n" * 32)
    (work / "latin1.txt").write_bytes("first line\nsecond line, caf\u00e9\n".encode("latin-1"))
    (work / "user_folder").mkdir(exist_ok=True)
    (work / "user_folder" / "thesis.tex").write_text("precious")
    extra, expected = CONVERT_CASES[case]
    args = ["--source", work / "bert", "--to", "sym_bert", "--output", work / "out",
            *[a.replace("{root}", str(work)) for a in extra]]
    fails_cleanly(convert_main, args, expected, work, capsys)


@pytest.fixture
def heal_args(work):
    return ["--teacher", work / "bert", "--student", work / "student", "--text", work / "text.txt", "--steps", "2",
            "--batch-size", "4"]


HEAL_CASES = {
    "nan_rate": (["--learning-rate", "nan"], "argument --learning-rate: must be a finite number > 0"),
    "negative_rate": (["--learning-rate=-1e-3"], "argument --learning-rate: must be a finite number > 0"),
    "zero_steps": (["--steps", "0"], "argument --steps: must be a positive integer"),
    "checkpoint_dir_of_the_user": (["--checkpoint-dir", "{root}/user_folder"], "holds files leanbert did not write"),
    "checkpoint_dir_parent_of_inputs": (["--checkpoint-dir", "{root}"], "contains the teacher"),
    "output_parent_of_student": (["--output", "{root}", "--force"], "contains the teacher"),
    "output_is_the_student": (["--output", "{root}/student", "--force"], "is the student itself"),
    "resume_without_checkpoint": (["--resume"], "--resume: no complete checkpoint"),
}

if not torch.cuda.is_available():
    HEAL_CASES["fp16_on_the_cpu"] = (["--mixed-precision", "fp16"], "needs a GPU")


@pytest.mark.parametrize("case", sorted(HEAL_CASES))
def test_heal_refuses_bad_settings_with_one_line(work, heal_args, case, capsys):
    (work / "user_folder").mkdir(exist_ok=True)
    (work / "user_folder" / "thesis.tex").write_text("precious")
    extra, expected = HEAL_CASES[case]
    args = [*heal_args, "--output", work / "healed", *[a.replace("{root}", str(work)) for a in extra]]
    fails_cleanly(heal_main, args, expected, work, capsys)


@pytest.mark.parametrize("change", ["weights", "config"])
def test_heal_refuses_a_teacher_other_than_the_reports_source(work, heal_args, capsys, change):
    other = work / "other_bert"
    shutil.copytree(work / "bert", other)
    if change == "weights":
        state = load_file(other / "model.safetensors")
        state["bert.encoder.layer.0.output.dense.weight"] += 0.01
        save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    else:  # the same weights computing something else
        config = json.loads((other / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    args = [*heal_args, "--output", work / "healed"]
    args[1] = other
    try:
        fails_cleanly(heal_main, args, "the teacher's weights are not those the student was converted from", work,
                      capsys)
    finally:
        shutil.rmtree(other)


def altered_student(work: Path, name: str, report_changes: dict, pickled: bool = False) -> Path:
    """A copy of the converted student with `report_changes` made to its conversion report, its weights saved as a
    pickle (pytorch_model.bin) alone if `pickled`."""
    folder = work / name
    shutil.copytree(work / "student", folder)
    report = json.loads((folder / "conversion_report.json").read_text())
    (folder / "conversion_report.json").write_text(json.dumps({**report, **report_changes}))
    if pickled:
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def test_heal_refuses_a_report_whose_fitted_parameters_the_student_lacks(work, heal_args, capsys):
    for name, fitted, expected in (("student_unknown", ["sym_bert.encoder.layer.9.attention.self.qk.weight"],
                                    "names 'sym_bert.encoder.layer.9.attention.self.qk.weight', which the student "
                                    "does not have"),
                                   ("student_nothing", [], "its fitted_parameters names no parameter healing trains")):
        args = [*heal_args, "--output", work / "healed"]
        args[3] = altered_student(work, name, {"fitted_parameters": fitted})
        try:
            fails_cleanly(heal_main, args, expected, work, capsys)
        finally:
            shutil.rmtree(args[3])


def test_heal_takes_a_pickled_student_with_allow_pickle_and_a_hand_edited_report(work, heal_args, tmp_path, capsys):
    """`--allow-pickle` trusts the student's pickle weights as the refusal says it does, and a report edited by hand
    (fields missing or of another type) still gives a model card, with "n/a" where a number is missing."""
    student = altered_student(work, "student_pickled", {"fidelity": {"measure": "edited"}, "settings": "edited",
                                                        "parameters": {"source": 1}}, pickled=True)
    args = [*heal_args, "--output", tmp_path / "healed"]
    args[3] = student
    try:
        fails_cleanly(heal_main, args, "--allow-pickle trusts them", work, capsys)
        assert heal_main([str(a) for a in [*args, "--allow-pickle"]]) == 0, capsys.readouterr().err
    finally:
        shutil.rmtree(student)
    card = (tmp_path / "healed" / "README.md").read_text()
    assert "| converted | n/a | n/a |" in card and "## Parameters" not in card


class Payload:
    """Unpickling this runs code: it creates the file named by `flag`."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (Path(self.flag),))


def test_resume_refuses_changed_settings_and_never_unpickles_code(work, heal_args, tmp_path, capsys,
                                                                   monkeypatch):
    output = tmp_path / "healed"
    args = [*heal_args, "--output", output, "--checkpoint-every", "1"]
    interrupted = args[:]
    interrupted[interrupted.index("--steps") + 1] = "4"

    def stop_after_checkpoint(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    from leanbert.healing import distill

    original = distill.Healing.write_to
    with monkeypatch.context() as patch:
        patch.setattr(distill.Healing, "write_to", lambda self, folder, callback=None: original(
            self, folder, stop_after_checkpoint))
        assert heal_main([str(a) for a in interrupted]) == 130
    capsys.readouterr()
    checkpoints = tmp_path / "healed.heal-checkpoints"
    assert (checkpoints / "step_2" / "progress.json").is_file() and not output.exists()

    resumed = [str(a) for a in interrupted] + ["--resume"]
    changed = resumed[:]
    changed[changed.index("--batch-size") + 1] = "2"
    fails_cleanly(heal_main, changed, "setting batch_size is 2 but the checkpoint was made with 4", tmp_path, capsys)
    fails_cleanly(heal_main, [*resumed, "--learning-rate", "1e-3"], "setting learning_rate is 0.001", tmp_path, capsys)
    fails_cleanly(heal_main, [str(a) for a in interrupted], "pass --resume to continue it", tmp_path, capsys)

    flag = tmp_path / "code_ran"
    rng = checkpoints / "step_2" / "random_states_0.pkl"
    saved = rng.read_bytes()
    rng.write_bytes(pickle.dumps(Payload(str(flag))))
    fails_cleanly(heal_main, resumed, "was changed after it was saved (random_states_0.pkl)", tmp_path, capsys)
    assert not flag.exists(), "a tampered checkpoint ran code"
    # a tamperer who also fixes the checksum (checksums detect accidents, not forgery) meets torch's weights-only
    # loader, which refuses to run code; and random states that do not load stop the resume (accelerate would
    # skip them without a word)
    progress_file = checkpoints / "step_2" / "progress.json"
    progress = json.loads(progress_file.read_text())
    progress["files"][rng.name] = hashlib.sha256(rng.read_bytes()).hexdigest()
    progress_file.write_text(json.dumps(progress))
    fails_cleanly(heal_main, resumed, "its random states (random_states_0.pkl) do not load", tmp_path, capsys)
    assert not flag.exists(), "a tampered checkpoint ran code"
    rng.write_bytes(saved)
    progress["files"][rng.name] = hashlib.sha256(saved).hexdigest()
    progress_file.write_text(json.dumps(progress))
    (checkpoints / "step_3.partial").mkdir()  # a save killed half-way is skipped
    assert heal_main(resumed) == 0
    assert not flag.exists(), "a tampered checkpoint ran code"
    report = json.loads((output / "conversion_report.json").read_text())
    assert report["healing"]["resumed_from_step"] == 2 and report["healing"]["steps"] == 4
    assert not checkpoints.exists()


def test_keyboard_interrupt_exits_130_and_leaves_the_old_output(work, capsys, monkeypatch):
    """Ctrl-C during a conversion: exit code 130, one line, the previous output untouched, no leftovers."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("leanbert.conversion.convert"), "layer_inputs", interrupted)
    before = snapshot(work)
    code = convert_main([str(a) for a in ("--source", work / "bert", "--to", "sym_bert",
                                          "--output", work / "good_output",
                                          "--force", "--calibration-text", work / "text.txt")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 130 and lines == ["leanbert-convert: interrupted; no output was written or replaced"]
    assert snapshot(work) == before and not [p for p in work.rglob(".*.leanbert-*")]


def test_next_sentence_and_pretraining_sources_convert(work, tmp_path):
    from transformers import BertForNextSentencePrediction, BertForPreTraining

    import leanbert

    bert = torch.nn.Module()
    for bert_class, student_class in ((BertForPreTraining, leanbert.SymBertForMaskedLM),
                                      (BertForNextSentencePrediction, leanbert.SymBertModel)):
        source = tmp_path / bert_class.__name__
        bert = bert_class.from_pretrained(work / "bert")
        bert.save_pretrained(source)
        AutoTokenizer.from_pretrained(work / "bert").save_pretrained(source)
        report = convert(str(source), "sym_bert", tmp_path / f"{bert_class.__name__}-out",
                         calibration_text=work / "text.txt", refine_steps=0)
        assert report["target_architecture"] == student_class.__name__
        student = student_class.from_pretrained(tmp_path / f"{bert_class.__name__}-out")
        torch.testing.assert_close(student.base_model.embeddings.word_embeddings.weight,
                                   bert.bert.embeddings.word_embeddings.weight, atol=0, rtol=0)


def namespaces_allowed() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"]).returncode == 0


@pytest.mark.skipif(not namespaces_allowed(), reason="needs user and mount namespaces (unshare -rm)")
def test_an_output_that_does_not_fit_on_the_disk_is_one_line_and_leaves_nothing(work, tmp_path):
    """The output's folder on a 1 MiB tmpfs (in a mount namespace of its own, gone with it): the converted weights
    (5.7 MiB) fill the disk while being saved. One line naming the output and the space, exit 2, and the disk as it
    was: no staging folder, no lock, no parent folder the run made."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "-m", "leanbert.commands.convert", "--source", work / "bert", "--to", "sym_bert",
               "--calibration-text", work / "text.txt", "--calibration-passages", 16, "--refine-steps", 0,
               "--output", disk / "runs" / "model"]
    script = f'mount -t tmpfs -o size=1m tmpfs "$1" && shift && "$@"; code=$?; ls -A "{disk}"; exit $code'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(disk), *map(str, command)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip() and "%|" not in line]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"leanbert-convert: error: no space left for the output {str(disk / 'runs' / 'model')!r}: the result needs "
        "more than the "), lines
    assert re.search(r"MiB written when the disk filled and 1\.0 MiB are free; free some space or give --output on "
                     "a larger disk$", lines[0]), lines
    assert done.stdout.split() == [], "nothing of the run is left on the disk"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_text_that_is_no_regular_file_is_named_as_such(tmp_path, kind):
    """A named pipe or a device (/dev/zero) exists: it is refused as what it is, not as missing."""
    from leanbert.common.errors import LeanbertError
    from leanbert.common.passages import text_files

    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "pipe.txt"
        os.mkfifo(path)
    with pytest.raises(LeanbertError, match=f"^training text '{path}' is not a regular file or folder"):
        text_files(path, "training text")
