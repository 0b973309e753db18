"""Two processes on this CPU (`accelerate launch`, DDP over gloo): pretraining and healing synchronise their
gradients (the weights are identical on both ranks afterwards), count global steps and samples, learn, and write a
model that loads; a run configured for FSDP, which accelerate runs on GPUs only, stops with one line."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertModel

from conftest import SHARED_DATA, fails_cleanly, real_minilm_path
from leanbert.commands.pretrain import main as pretrain_main
from leanbert.common.passages import read_passages
from leanbert.conversion import convert

REPO = Path(__file__).resolve().parents[1]
RECORDER = REPO / "tests" / "launched" / "record_ranks.py"
TINY = "num_hidden_layers=2,hidden_size=64,num_attention_heads=4,intermediate_size=128"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path, command: str, arguments: list, config: Path | None = None,
           stop_after_step: int = 0) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`accelerate launch` of a leanbert command on 2 processes (interrupted after `stop_after_step`, if given);
    returns the process and what each rank recorded."""
    record = tmp_path / "ranks"
    record.mkdir(exist_ok=True)
    setup = ["--config_file", str(config)] if config else ["--multi_gpu", "--num_processes", "2", "--num_machines",
                                                          "1", "--dynamo_backend", "no"]
    done = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", *setup, "--mixed_precision",
                           "no", "--main_process_port", str(free_port()), str(RECORDER), str(record), command,
                           *map(str, arguments)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "STOP_AFTER_STEP": str(stop_after_step)})
    ranks = [json.loads(path.read_text()) for path in sorted(record.glob("rank*.json"))]
    return done, ranks


def check_synchronised(done, ranks, steps: int, batch_size: int) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(ranks) == 2 and {rank["processes"] for rank in ranks} == {2}
    assert ranks[0]["checksum"] == ranks[1]["checksum"], "the ranks trained different weights: no all-reduce"
    assert all(rank["step"] == steps and rank["samples"] == steps * batch_size * 2 for rank in ranks)
    losses = ranks[0]["losses"]
    assert len(losses) == steps and sum(losses[-3:]) < sum(losses[:3])


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "train.txt"
    with open(SHARED_DATA / "text" / "gutenberg-pd" / "train.txt", encoding="utf-8") as source:
        path.write_text(source.read(150_000).rsplit("\n", 1)[0] + "\n", encoding="utf-8")
    return path


def test_pretraining_on_two_processes_synchronises_and_loads(tmp_path, text):
    output = tmp_path / "pretrained"
    done, ranks = launch(tmp_path, "pretrain", [
        "--model-type", "sym_bert", "--config-overrides", TINY, "--tokenizer", real_minilm_path(), "--train-file", text,
        "--output", output, "--max-train-steps", 12, "--per-device-batch-size", 4, "--max-seq-length", 32,
        "--learning-rate", 3e-3, "--warmup-ratio", 0, "--cache-dir", tmp_path / "cache"])
    check_synchronised(done, ranks, steps=12, batch_size=4)
    report = json.loads((output / "training_report.json").read_text())
    assert report["samples"] == 12 * 4 * 2 and report["validation"]["loss"] > 0
    model = AutoModelForMaskedLM.from_pretrained(output)
    assert model.config.model_type == "sym_bert"
    loaded = subprocess.run([sys.executable, "-c", (
        "import sys, torch\n"
        "from transformers import AutoModelForMaskedLM\n"
        f"model = AutoModelForMaskedLM.from_pretrained({str(output)!r}, trust_remote_code=True)\n"
        "assert 'leanbert' not in sys.modules, 'leanbert was imported'\n"
        "print(type(model).__module__, model(torch.tensor([[101, 2023, 102]])).logits.shape)")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "transformers_modules" in loaded.stdout and f"[1, 3, {model.config.vocab_size}]" in \
        loaded.stdout.replace("torch.Size(", "").replace(")", "")


def test_a_checkpoint_of_two_processes_is_not_resumed_on_one(tmp_path, text, capsys):
    """Steps, the schedule and the data order count over all processes: a 2-process checkpoint resumed on 1 process
    would train at another batch size with a learning rate gone to 0, so the resume is refused, naming both counts."""
    checkpoints = tmp_path / "checkpoints"
    arguments = ["--model-type", "bert", "--config-overrides", TINY, "--tokenizer", real_minilm_path(), "--train-file",
                 text, "--output", tmp_path / "pretrained", "--max-train-steps", 4, "--per-device-batch-size", 2,
                 "--max-seq-length", 32, "--validation-split", 0, "--checkpoint-every", 2, "--checkpoint-dir",
                 checkpoints, "--cache-dir", tmp_path / "cache"]
    done, _ = launch(tmp_path, "pretrain", arguments, stop_after_step=3)
    assert done.returncode != 0
    saved = sorted(p.name for p in checkpoints.iterdir())
    assert saved == [".leanbert-checkpoints.json", "step_2"], done.stderr[-3000:]
    assert json.loads((checkpoints / "step_2" / "progress.json").read_text())["processes"] == 2
    fails_cleanly(pretrain_main, [*arguments, "--resume"], "--resume: the checkpoint was made by 2 processes and this "
                  "run has 1", tmp_path, capsys)


def test_healing_on_two_processes_synchronises(tmp_path, text):
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, initializer_range=0.2)).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(read_passages()[0][:96]))
    convert(str(tmp_path / "teacher"), "shatter", tmp_path / "student", calibration_text=calibration, refine_steps=0)
    done, ranks = launch(tmp_path, "heal", [
        "--teacher", tmp_path / "teacher", "--student", tmp_path / "student", "--text", text,
        "--output", tmp_path / "healed", "--steps", 10, "--batch-size", 4, "--learning-rate", 3e-3, "--train", "all"])
    check_synchronised(done, ranks, steps=10, batch_size=4)
    healing = json.loads((tmp_path / "healed" / "conversion_report.json").read_text())["healing"]
    assert healing["processes"] == 2 and healing["samples"] == 10 * 4 * 2
    assert healing["fidelity_after"]["mean_cosine"] > healing["fidelity_before"]["mean_cosine"]


def test_fsdp_on_cpus_stops_with_one_line(tmp_path, text):
    """accelerate runs FSDP on GPUs only and on CPUs silently sets up plain DDP; leanbert refuses to train
    otherwise than the config asks, before any training."""
    output = tmp_path / "pretrained"
    done, ranks = launch(tmp_path, "pretrain", [
        "--model-type", "sym_bert", "--config-overrides", TINY, "--tokenizer", real_minilm_path(), "--train-file", text,
        "--output", output, "--max-train-steps", 2, "--per-device-batch-size", 4, "--max-seq-length", 32,
        "--cache-dir", tmp_path / "cache"], config=REPO / "examples" / "accelerate" / "fsdp.yaml")
    assert done.returncode != 0 and not ranks and not output.exists()
    errors = [line for line in done.stderr.splitlines() if line.startswith("leanbert-pretrain: error:")]
    assert errors and "asks for FSDP" in errors[0] and "GPUs only" in errors[0]
