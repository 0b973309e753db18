"""What only a real process shows: file permissions (which a test running as root would not feel), mount points,
and a Ctrl-C that arrives while a command is still loading torch.

The permission cases run the commands in a child process without the capabilities that let root ignore file modes
(`setpriv`), or as they are when the tests do not run as root; the mount cases run in a child process with a user
and mount namespace of its own (`unshare -rm`), whose mounts vanish with it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from conftest import SHARED_DATA, real_minilm_path

GLUE = SHARED_DATA / "glue"
UNPRIVILEGED = (["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"] if os.geteuid() == 0 else [])

# One child process runs every case (torch loads once): each case is a command's `main(argv)`, its exit code and
# stderr lines are printed as JSON.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from leanbert.commands.finetune import main as finetune
    from leanbert.commands.pretrain import main as pretrain
    results = []
    for command, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = {"pretrain": pretrain, "finetune": finetune}[command](argv)
        results.append({"code": code, "lines": [line for line in err.getvalue().splitlines() if line.strip()]})
    print(json.dumps(results))
""")


def run_unprivileged(cases: list[tuple[str, list]]) -> list[dict]:
    argv = [*UNPRIVILEGED, sys.executable, "-c", DRIVER, json.dumps([(c, [str(a) for a in args]) for c, args in cases])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def tree(tmp_path):
    """Inputs and read-only places: a text, a text folder with an unreadable file, an unreadable one and one that
    can be listed but not entered, a GLUE folder with an unreadable train.tsv and one whose task folder cannot be
    entered, a read-only folder, an empty read-only output folder and an unreadable one."""
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    text = (SHARED_DATA / "text" / "gutenberg-pd" / "train.txt").read_bytes()[:20_000]
    (tmp_path / "text.txt").write_bytes(text)
    for folder in ("texts", "closed_texts", "unenterable_texts"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_bytes(text)
        (tmp_path / folder / "b.txt").write_bytes(text)
    for glue in ("glue", "unenterable_glue"):
        (tmp_path / glue / "RTE").mkdir(parents=True)
        for split in ("train", "dev"):
            shutil.copy(GLUE / "RTE" / f"{split}.tsv", tmp_path / glue / "RTE")
    for folder in ("read_only", "empty_read_only", "closed_output"):
        (tmp_path / folder).mkdir()
    (tmp_path / "texts" / "b.txt").chmod(0o000)
    (tmp_path / "glue" / "RTE" / "train.tsv").chmod(0o000)
    for folder, mode in (("closed_texts", 0o000), ("closed_output", 0o000), ("unenterable_texts", 0o644),
                         ("unenterable_glue/RTE", 0o644), ("read_only", 0o555), ("empty_read_only", 0o555)):
        (tmp_path / folder).chmod(mode)
    yield tmp_path
    for folder in ("closed_texts", "closed_output", "unenterable_texts", "unenterable_glue/RTE"):
        (tmp_path / folder).chmod(0o755)  # so that pytest can remove it all
    for path in tmp_path.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root without setpriv feels no modes")
def test_what_the_user_may_not_read_or_write_is_refused_in_one_line_before_any_work(tree):
    scratch = ["--model-type", "bert", "--tokenizer", tree / "tokenizer", "--config-overrides",
               "num_hidden_layers=1,hidden_size=32,num_attention_heads=4,intermediate_size=64",
               "--max-seq-length", 32, "--max-train-steps", 2, "--cache-dir", tree / "cache"]

    def pretrain(train: str, output: str) -> tuple[str, list]:
        return "pretrain", [*scratch, "--train-file", tree / train, "--output", tree / output]

    def finetune(data: str) -> tuple[str, list]:
        return "finetune", ["--model", tree / "bert", "--task", "rte", "--data-dir", tree / data,
                            "--max-seq-length", 32, "--max-train-steps", 2, "--output", tree / "out"]

    cases = {  # what is wrong: (command, arguments, the line expected)
        "output under a read-only folder": (
            *pretrain("text.txt", "read_only/out"), f"'{tree / 'read_only'}' is not writable (Permission denied)"),
        "an empty read-only output folder": (
            *pretrain("text.txt", "empty_read_only"),
            f"'{tree / 'empty_read_only'}' is not readable and writable (Permission denied)"),
        "an unreadable output folder": (
            *pretrain("text.txt", "closed_output"),
            f"'{tree / 'closed_output'}' is not readable and writable (Permission denied)"),
        "an unreadable text in a folder": (
            *pretrain("texts", "out"), f"cannot read training text '{tree / 'texts' / 'b.txt'}': Permission denied"),
        "an unreadable text folder": (
            *pretrain("closed_texts", "out"),
            f"cannot read training text '{tree / 'closed_texts'}': Permission denied"),
        "a text folder that cannot be entered": (
            *pretrain("unenterable_texts", "out"),
            f"cannot read training text '{tree / 'unenterable_texts'}': Permission denied"),
        "a GLUE task folder that cannot be entered": (*finetune("unenterable_glue"), "Permission denied"),
        "an unreadable GLUE file": (
            *finetune("glue"), f"cannot read {tree / 'glue' / 'RTE' / 'train.tsv'}: Permission denied"),
    }
    before = sorted(p.name for p in tree.iterdir())
    results = run_unprivileged([(command, args) for command, args, _ in cases.values()])
    for (case, (_, _, expected)), result in zip(cases.items(), results):
        assert result["code"] == 2 and len(result["lines"]) == 1 and expected in result["lines"][0], (case, result)
    assert sorted(p.name for p in tree.iterdir()) == before  # nothing written, not even the tokenised cache
    assert (tree / "empty_read_only").stat().st_mode & 0o777 == 0o555 and not any((tree / "read_only").iterdir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_a_command_loads_torch_exits_130_in_one_line(signum):
    """Ctrl-C (or SIGTERM) once the console script has begun loading torch (its library is mapped): one line, exit
    130, no traceback."""
    script = Path(sys.executable).with_name("leanbert-pretrain")
    process = subprocess.Popen([script, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:  # the process is ending
            break
        time.sleep(0.005)
    assert process.poll() is None, "the command finished before torch was seen loading"
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    expected = ["leanbert-pretrain: interrupted while starting; nothing was written"]
    assert process.returncode == 130 and lines == expected, (process.returncode, err[-2000:])
    assert "Traceback" not in err and not out


def namespaces_allowed() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"]).returncode == 0


MOUNTS = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    from leanbert.common.errors import LeanbertError
    from leanbert.common.output import SafeOutput

    root = Path(sys.argv[1])

    def mount(*args):
        subprocess.run(["mount", *args], check=True)

    def refusal(path):
        try:
            SafeOutput(path)
        except LeanbertError as error:
            return str(error)

    mount("-t", "tmpfs", "tmpfs", str(root / "tmpfs"))
    mount("--bind", str(root / "bound"), str(root / "bound"))
    results = {"tmpfs": refusal(root / "tmpfs"), "bind mount": refusal(root / "bound")}
    output = SafeOutput(root / "late")
    try:
        with output as staging:
            (staging / "model.txt").write_text("the result")
            mount("-t", "tmpfs", "tmpfs", str(root / "late"))
            output.publish()
    except LeanbertError as error:
        results["mounted during the run"] = str(error)
    print(json.dumps(results))
""")


@pytest.mark.skipif(not namespaces_allowed(), reason="this machine lets no process make its own mount namespace")
def test_an_output_that_is_or_becomes_a_mount_point_is_refused_and_the_result_kept(tmp_path):
    """The result is renamed into place from beside the output, which a mount point (a Docker volume, say) cannot
    take: refused before any work, a bind mount of a folder of the same file system included; one mounted during
    the run is found at the end and the finished result kept beside it, under a name the error gives."""
    for folder in ("tmpfs", "bound", "late"):
        (tmp_path / folder).mkdir()
    done = subprocess.run(["unshare", "-rm", sys.executable, "-c", MOUNTS, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for case, folder in (("tmpfs", "tmpfs"), ("bind mount", "bound")):
        assert results[case] == (f"output '{tmp_path / folder}' is a mount point: the finished result is renamed into "
                                 "place from beside it, which cannot cross file systems; give a folder inside it, "
                                 f"such as '{tmp_path / folder / 'model'}'"), case
    (kept,) = tmp_path.glob("late.leanbert-unpublished-*")
    assert results["mounted during the run"].endswith(f"is a mount point: the finished result is renamed into place "
                                                      f"from beside it, which cannot cross file systems; give a folder "
                                                      f"inside it, such as '{tmp_path / 'late' / 'model'}'; the new "
                                                      f"result is kept in '{kept}'")
    assert (kept / "model.txt").read_text() == "the result" and (kept / ".leanbert-output.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bound", kept.name, "late", "tmpfs"])


PARENT_TURNS_READ_ONLY = textwrap.dedent("""
    import sys
    from pathlib import Path
    from leanbert.common.errors import LeanbertError
    from leanbert.common.output import SafeOutput

    parent = Path(sys.argv[1])
    output = SafeOutput(parent / "out")
    try:
        with output as staging:
            (staging / "model.txt").write_text("the result")
            parent.chmod(0o555)
            output.publish()
    except LeanbertError as error:
        print(error)
""")


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root without setpriv feels no modes")
def test_a_result_the_file_system_refuses_to_publish_is_kept_and_survives_the_next_run(tmp_path):
    """The output's folder turns read-only while the run works: the final rename fails, and so does moving the
    result aside, so it stays in its staging folder, marked; the next run on that output recovers the lock the
    failed run could not remove, and keeps that folder."""
    parent = tmp_path / "parent"
    parent.mkdir()
    done = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", PARENT_TURNS_READ_ONLY, str(parent)],
                          capture_output=True, text=True, timeout=120)
    parent.chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    (kept,) = parent.glob(".out.leanbert-new-*")
    assert done.stdout.strip() == (f"cannot put the result in place of output '{parent / 'out'}': Permission denied; "
                                   f"the new result is kept in '{kept}'")
    assert (kept / "model.txt").read_text() == "the result"
    pid = kept.name.rsplit("-", 1)[1]
    recovered = subprocess.run([sys.executable, "-c", "import sys\nfrom leanbert.common.output import SafeOutput\n"
                                "with SafeOutput(sys.argv[1]):\n    pass", str(parent / "out")],
                               capture_output=True, text=True, timeout=120)
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    assert (f"leanbert: an earlier run on '{parent / 'out'}' (pid {pid}) was interrupted; kept {kept.name}: it holds "
            "a finished result that run could not publish") in recovered.stderr
    assert (kept / "model.txt").read_text() == "the result"
    assert sorted(p.name for p in parent.iterdir()) == [kept.name]
