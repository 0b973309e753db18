"""Inputs known by content, not by path (issue #31): the tokenisation cache follows a text replaced under its old
modification time and rebuilds a damaged cache file; `--resume` refuses changed inputs (the text, the tokenizer's
normalisation), another process count, a live run's folder and random states accelerate did not restore; a batch
without a masked token does not poison pretraining; a checkpoint that does not fit on the disk is one line and
leaves nothing partial. One tiny pretraining run (2 layers of width 32, blocks of 32 tokens) is shared."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import SHARED_DATA, real_minilm_path
from leanbert.common.checkpoints import CheckpointFolder
from leanbert.common.errors import LeanbertError
from leanbert.common.output import process_start, sha256_file
from leanbert.training import TrainingError, pretrain
from leanbert.training.text import SeededMasking, packed_blocks

TINY = "num_attention_heads=4,num_hidden_layers=2,hidden_size=32,intermediate_size=64,max_position_embeddings=64"
SEQ = 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def replace_keeping_mtime(path: Path, data: bytes) -> None:
    """Rewrite `path` in place and set its modification time back, as a copy tool preserving times would."""
    stat = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A pretraining interrupted after its checkpoint at step 2 (of 4), at an mlm_probability so low that most
    batches of 2 blocks draw no masked token: its text, tokenizer folder, settings and checkpoint folder."""
    root = tmp_path_factory.mktemp("by_content")
    text = root / "train.txt"
    with open(SHARED_DATA / "text" / "gutenberg-pd" / "train.txt", encoding="utf-8") as source:
        text.write_text(source.read(12_000).rsplit("\n", 1)[0] + "\n", encoding="utf-8")
    tokenizer = root / "tokenizer"
    AutoTokenizer.from_pretrained(real_minilm_path()).save_pretrained(tokenizer)
    settings = dict(train_file=text, model_type="bert", config_overrides=TINY, tokenizer=str(tokenizer),
                    max_seq_length=SEQ, mlm_probability=0.01, validation_split=0, cache_dir=str(root / "cache"),
                    steps=4, batch_size=2, checkpoint_every=2, learning_rate=1e-3)

    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(root / "out", callback=stop, **settings)
    return {"root": root, "text": text, "tokenizer": tokenizer, "settings": settings,
            "checkpoints": root / "out.pretrain-checkpoints"}


def resume(run):
    return pretrain(run["root"] / "out", resume=True, **run["settings"])


def test_resume_refuses_changed_inputs_and_continues_on_the_same(run):
    text, original = run["text"], run["text"].read_bytes()
    replace_keeping_mtime(text, original.replace(b"the", b"a"))
    with pytest.raises(LeanbertError, match=r"--resume: training text '.*train\.txt' has other contents since the "
                                            "checkpoint was made"):
        resume(run)
    replace_keeping_mtime(text, original)

    config = run["tokenizer"] / "tokenizer_config.json"
    saved, uncased = config.read_bytes(), AutoTokenizer.from_pretrained(run["tokenizer"])
    config.write_text(json.dumps({**json.loads(saved), "do_lower_case": False}))  # cased, with the same vocabulary
    cased = AutoTokenizer.from_pretrained(run["tokenizer"])
    assert cased.get_vocab() == uncased.get_vocab() and cased("Hello")["input_ids"] != uncased("Hello")["input_ids"]
    with pytest.raises(LeanbertError, match="--resume: the tokenizer's normalizer changed since the checkpoint"):
        resume(run)
    config.write_bytes(saved)

    folder = CheckpointFolder(run["checkpoints"])
    path, progress = folder.latest()
    assert progress["processes"] == 1 and progress["inputs"]["training text"]["files"] == {
        "train.txt": sha256_file(text)}
    with pytest.raises(LeanbertError, match="made by 1 processes and this run has 2; .* resume with 1"):
        folder.resume_point(progress["settings"], True, processes=2)

    states = path / "random_states_0.pkl"
    kept = states.read_bytes()
    damaged = torch.load(states, weights_only=False)
    damaged["torch_manual_seed"] = torch.zeros(8, dtype=torch.uint8)  # not a generator state: torch refuses it
    torch.save(damaged, states)
    progress["files"][states.name] = sha256_file(states)  # re-hashed: the checksums detect accidents only
    (path / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(TrainingError, match="accelerate did not restore its random states"):
        resume(run)
    states.write_bytes(kept)
    progress["files"][states.name] = sha256_file(states)
    (path / "progress.json").write_text(json.dumps(progress))

    report = resume(run)  # the same inputs: it continues, and no step's loss was poisoned by a batch without masks
    curve = json.loads((run["root"] / "out" / "pretraining_curve.json").read_text())
    assert report["steps"] == 4 and [p["step"] for p in curve["train"]] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in curve["train"])


def test_a_live_runs_checkpoint_folder_is_not_called_an_earlier_runs(tmp_path):
    folder = tmp_path / "out.pretrain-checkpoints"
    (folder / "step_2").mkdir(parents=True)
    (folder / ".leanbert-checkpoints.json").write_text("{}")
    (folder / "step_2" / "progress.json").write_text(json.dumps({"step": 2, "files": {}}))
    lock = tmp_path / ".out.pretrain-checkpoints.leanbert-lock"
    holder = subprocess.Popen(["sleep", "120"])
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "start": process_start(holder.pid),
                                    "command": "leanbert-pretrain", "since": "2026-12-08 00:00:00"}))
        running = f"is in use by another leanbert run, still running \\(leanbert-pretrain, pid {holder.pid}, "
        with pytest.raises(LeanbertError, match=running):
            CheckpointFolder(folder).resume_point({}, False)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(LeanbertError, match=r"holds a checkpoint \(step 2\) of an earlier run; pass --resume"):
        CheckpointFolder(folder).resume_point({}, False)
    with pytest.raises(LeanbertError, match="of an earlier run; leanbert-convert cannot continue it"):  # no --resume
        CheckpointFolder(folder, command="leanbert-convert").resume_point({}, False)


@pytest.mark.parametrize("command", ["leanbert-convert", "leanbert-heal"])
def test_an_interrupted_conversion_leaves_no_checkpoint_it_cannot_continue_from(tmp_path, command):
    """`leanbert-convert --heal` has no --resume: a checkpoint it saved would only make the next run stop and ask
    for the folder to be deleted, so an interrupted conversion takes its checkpoints with it; leanbert-heal keeps
    its own, for --resume."""
    from leanbert.training.run import TrainingRun

    text = tmp_path / "text.txt"
    text.write_text("a healing text\n")
    run = TrainingRun(tmp_path / "out", [("healing text", text)], command=command, task="heal")
    run.check_resume({"seed": 1}, False)
    with pytest.raises(KeyboardInterrupt), run.staged():
        (run.checkpoints.path / "step_100").mkdir()
        (run.checkpoints.path / "step_100" / "progress.json").write_text(json.dumps({"step": 100, "files": {}}))
        raise KeyboardInterrupt
    assert (tmp_path / "out.heal-checkpoints").exists() == (command == "leanbert-heal")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["text.txt", *(
        ["out.heal-checkpoints"] if command == "leanbert-heal" else [])]), "no lock, nothing else left"


def test_a_setting_derived_from_a_changed_input_names_the_file(tmp_path):
    """Healing records checksums of its inputs among its settings (text_sha256, teacher_checksum): when one of them
    differs because an input's contents changed, the line names the file, not the checksum setting."""
    from leanbert.common.fingerprints import input_fingerprints

    text = tmp_path / "text.txt"
    text.write_text("the text the run started with\n")
    folder = tmp_path / "out.heal-checkpoints"
    (folder / "step_2").mkdir(parents=True)
    (folder / ".leanbert-checkpoints.json").write_text("{}")
    inputs = [("healing text", text)]
    (folder / "step_2" / "progress.json").write_text(json.dumps({
        "step": 2, "files": {}, "settings": {"seed": 1, "text_sha256": "a"},
        "inputs": input_fingerprints(inputs)}))
    with pytest.raises(LeanbertError, match="setting seed is 2 but the checkpoint was made with 1"):
        CheckpointFolder(folder, inputs=inputs).resume_point({"seed": 2, "text_sha256": "a"}, True)
    text.write_text("another text\n")
    with pytest.raises(LeanbertError, match=f"^--resume: healing text '{text}' has other contents since the "
                                            "checkpoint was made"):
        CheckpointFolder(folder, inputs=inputs).resume_point({"seed": 1, "text_sha256": "b"}, True)


def test_the_cache_follows_the_text_by_content_and_rebuilds_a_damaged_file(tmp_path, capsys):
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    text = tmp_path / "text.txt"
    text.write_text("the first text of this test, long enough for a block or two of tokens\n" * 4)

    def blocks():
        return [list(map(int, ids)) for ids in packed_blocks([str(text)], tokenizer, 16, whole_word_mask=False,
                                                             cache_dir=str(tmp_path / "cache"),
                                                             what="training text")["input_ids"]]

    first = blocks()
    replace_keeping_mtime(text, b"an entirely other corpus, which the cache must not mistake for the first\n" * 4)
    second = blocks()
    assert second != first and second[0][:4] == tokenizer("an entirely other corpus")["input_ids"][:4]

    files = sorted((tmp_path / "cache").rglob("cache-*-blocks.arrow")) + sorted((tmp_path / "cache").rglob(
        "text-train.arrow"))
    assert len(files) == 4  # the blocks and the text, of each corpus
    capsys.readouterr()
    for file in files:
        with open(file, "r+b") as handle:
            handle.truncate(file.stat().st_size // 2)
    again = blocks()
    err = capsys.readouterr().err
    assert again == second and "does not load" in err and "rebuilding it" in err


def test_every_batch_gets_a_masked_token_and_a_text_of_special_tokens_is_refused(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    text = tmp_path / "text.txt"
    text.write_text("a line of plain words that the collator may mask, repeated for several blocks\n" * 8)
    blocks = packed_blocks([str(text)], tokenizer, 16, whole_word_mask=False, cache_dir=str(tmp_path / "cache"),
                           what="training text")
    masking = SeededMasking(tokenizer, 1e-6, False, seed=0)
    for start in range(0, len(blocks), 2):
        batch = masking([blocks[i] for i in range(start, min(start + 2, len(blocks)))])
        masked = (batch["labels"] != -100).nonzero().tolist()
        assert len(masked) == 1
        row, column = masked[0]
        assert batch["input_ids"][row, column] == tokenizer.mask_token_id
        assert batch["labels"][row, column] == blocks[start + row]["input_ids"][column]
        assert tokenizer.convert_ids_to_tokens(int(batch["labels"][row, column])) not in tokenizer.all_special_tokens

    special = tmp_path / "special.txt"
    special.write_text("\x01\x02\n" * 40)  # control characters, which the normaliser drops: [CLS] [SEP] only
    with pytest.raises(LeanbertError, match="holds no token that can be masked"):
        packed_blocks([str(special)], tokenizer, 16, whole_word_mask=False, cache_dir=str(tmp_path / "cache"),
                      what="training text")


def namespaces_allowed() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"]).returncode == 0


@pytest.mark.skipif(not namespaces_allowed(), reason="needs user and mount namespaces (unshare -rm)")
def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_line_and_leaves_nothing_partial(run, tmp_path):
    """The checkpoint folder on a 2 MiB tmpfs (in a mount namespace of its own): the first save runs out of space."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "-m", "leanbert.commands.pretrain", "--model-type", "bert", "--config-overrides", TINY,
               "--tokenizer", run["tokenizer"], "--train-file", run["text"], "--max-seq-length", SEQ,
               "--validation-split", 0, "--cache-dir", run["root"] / "cache", "--max-train-steps", 2,
               "--per-device-batch-size", 2, "--checkpoint-every", 1, "--checkpoint-dir", disk / "checkpoints",
               "--output", tmp_path / "out"]
    script = f'mount -t tmpfs -o size=2m tmpfs "$1" && shift && "$@"; code=$?; ls -A "{disk}"; exit $code'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(disk), *map(str, command)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip() and "%|" not in line]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and f"no space left for a checkpoint in '{disk / 'checkpoints'}'" in lines[0], lines
    assert "MiB are free" in lines[0] and "one needs about" in lines[0]
    assert done.stdout.split() == [], "the partial checkpoint, its folder and its lock are gone from the disk"
    assert not (tmp_path / "out").exists()


def test_a_cache_that_fills_the_disk_is_one_line_and_leaves_no_temporary_file(tmp_path):
    """`datasets.Dataset.map` writes a cache file through a temporary file next to it, which it leaves behind when
    the disk fills (its clean-up writes too); the run's own goes, another's stays."""
    import errno

    from leanbert.training.text import from_cache

    (tmp_path / "tmp_of_another_run").write_bytes(b"x")

    def build():
        (tmp_path / "tmpk2v9x").write_bytes(b"half of a cache file")
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = str(tmp_path / "cache-1234-blocks.arrow")
    with pytest.raises(LeanbertError, match=r"^no space left for the datasets cache of training text in '.*"
                                            r"cache-1234-blocks\.arrow': No space left on device; free some space"):
        from_cache(build, build, cache, "training text")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tmp_of_another_run"]


def test_a_model_folder_is_known_by_what_loads_from_it_not_by_its_notes(tmp_path):
    """A model folder's config, weights and tokenizer files decide a run; its card (README.md), hidden files and
    sub-folders (an onnx/ export, sentence-transformers modules) do not, so editing them never refuses a resume. A
    data folder is known by every file in it."""
    from leanbert.common.fingerprints import changed_input, input_fingerprints

    folder = tmp_path / "model"
    (folder / "onnx").mkdir(parents=True)
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("vocab.txt", "a\nb"),
                       ("README.md", "card"), (".cache", "x"), ("onnx/model.onnx", "graph")):
        (folder / name).write_text(text)
    before = {what: input_fingerprints([(what, folder)]) for what in ("model", "data")}
    assert set(before["model"]["model"]["files"]) == {"config.json", "model.safetensors", "vocab.txt"}
    (folder / "README.md").write_text("an edited card")
    (folder / "onnx" / "model.onnx").write_text("another graph")
    assert changed_input(before["model"], input_fingerprints([("model", folder)])) is None
    assert changed_input(before["data"], input_fingerprints([("data", folder)])) is not None
    (folder / "model.safetensors").write_text("other weights")
    assert "model.safetensors" in changed_input(before["model"], input_fingerprints([("model", folder)]))
