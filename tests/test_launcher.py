"""A leanbert command under `accelerate launch` on 2 processes (CPU, gloo): bad input is read once, from the main
process, and the launcher's own report of the failure names it too."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import real_minilm_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_input_under_accelerate_launch_is_one_line_from_the_main_process(tmp_path):
    """Every rank meets the missing text; only the main one prints the line, and the launcher stops the other
    (SIGTERM) without a KeyboardInterrupt traceback. What remains is accelerate's ChildFailedError report (it re-raises
    torch's), whose root cause now shows the line instead of "To enable traceback see ..."."""
    missing = tmp_path / "missing.txt"
    done = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                           "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision",
                           "no", "--main_process_port", str(free_port()), "-m", "leanbert.commands.pretrain",
                           "--model-type", "bert", "--tokenizer", str(real_minilm_path()), "--train-file", str(missing),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    line = f"leanbert-pretrain: error: training text '{missing}' not found: no such file or folder"
    lines = done.stderr.splitlines()
    assert done.returncode != 0
    assert [text for text in lines if text.startswith("leanbert-pretrain")] == [line], done.stderr[-3000:]
    assert "KeyboardInterrupt" not in done.stderr
    assert any(text.strip() == f"traceback : {line}" for text in lines), done.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_usage_error_is_read_once_under_a_launcher(tmp_path, monkeypatch, capsys):
    """argparse's usage errors are met by every rank alike: like any other bad input, a rank other than the main
    one marks its line with its rank (printed only if the launcher has not stopped it first), and the line goes to
    the launcher's error file."""
    from leanbert.commands import cli, pretrain

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cli, "RANK_GRACE_SECONDS", 0)
    try:
        code = pretrain.main(["--train-file", "t.txt", "--output", str(tmp_path / "out"), "--max-train-steps", "-1"])
    except SystemExit as exit:
        code = exit.code
    line = ("leanbert-pretrain: error: argument --max-train-steps: must be a positive integer, got -1 (see --help) "
            "(rank 1)")
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert json.loads(error_file.read_text())["message"] == line
