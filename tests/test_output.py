"""Safe output folders, leanbert-owned checkpoints and bounded text reading (`leanbert.common`).

The kill tests kill real processes with SIGKILL at the worst moments; the next run must find the user's data in
place and clean up what the dead run left.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leanbert.common import output as output_module
from leanbert.common.checkpoints import CheckpointFolder
from leanbert.common.errors import LeanbertError
from leanbert.common.output import MANIFEST, SafeOutput
from leanbert.common.passages import read_passages


def publish(path, files: dict[str, str], **kwargs) -> None:
    target = SafeOutput(path, **kwargs)
    with target as staging:
        for name, text in files.items():
            (staging / name).write_text(text)
        target.publish()


def contents(folder: Path) -> dict[str, str]:
    """The files of `folder` and their text, leanbert's manifest aside."""
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def test_new_output_appears_complete_with_a_manifest_and_nothing_else_beside_it(tmp_path):
    publish(tmp_path / "out", {"a.txt": "new", "b.txt": "more"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["a.txt", "b.txt"] and manifest["files"]["a.txt"]["size"] == 3


def test_force_replaces_only_leanberts_own_unchanged_output(tmp_path):
    out = tmp_path / "out"
    publish(out, {"a.txt": "one"})
    with pytest.raises(LeanbertError, match="exists and is not empty; pass --force"):
        SafeOutput(out)
    publish(out, {"a.txt": "two"}, force=True)
    assert contents(out) == {"a.txt": "two"}

    (out / "a.txt").write_text("edited by the user")  # a changed file is no longer leanbert's to replace
    with pytest.raises(LeanbertError, match=r"did not write or that changed since \('a.txt'\)"):
        SafeOutput(out, force=True)
    (out / "a.txt").write_text("two")
    (out / "empty").mkdir()  # even an empty folder of the user's is not leanbert's to delete
    with pytest.raises(LeanbertError, match="'empty/'"):
        SafeOutput(out, force=True)
    (out / "empty").rmdir()
    (out / "notes").mkdir()
    (out / "notes" / "mine.md").write_text("precious")
    with pytest.raises(LeanbertError, match="notes/mine.md"):
        SafeOutput(out, force=True)
    assert (out / "notes" / "mine.md").read_text() == "precious"


@pytest.mark.parametrize("where", ["same", "parent", "child", "symlinked_parent"])
def test_output_overlapping_an_input_is_refused_in_either_direction(tmp_path, where):
    source = tmp_path / "models" / "source"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "models")
    output = {"same": source, "parent": tmp_path / "models", "child": source / "out",
              "symlinked_parent": tmp_path / "link"}[where]
    with pytest.raises(LeanbertError, match="output .* (is the source itself|contains the source|is inside the source)"):
        SafeOutput(output, inputs=[("source", source)], force=True)
    assert (source / "config.json").read_text() == "{}"


@pytest.mark.parametrize("name", [".", "..", "", "/"])
def test_an_output_that_names_no_new_folder_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LeanbertError, match="does not name a new folder"):
        SafeOutput(name, force=True)


def test_unusable_output_paths_are_refused_with_one_line(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(LeanbertError, match="cannot be used"):
        SafeOutput(tmp_path / "loop" / "out")
    with pytest.raises(LeanbertError, match="cannot be used"):
        SafeOutput(tmp_path / ("x" * 300))


def test_a_file_or_symlink_output_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(LeanbertError, match="exists and is not a folder"):
        SafeOutput(tmp_path / "file", force=True)
    with pytest.raises(LeanbertError, match="is a symbolic link"):
        SafeOutput(tmp_path / "link", force=True)


def test_a_concurrent_run_on_the_same_output_fails_clearly(tmp_path):
    first = SafeOutput(tmp_path / "out")
    with first:
        with pytest.raises(LeanbertError, match="is being written by another leanbert run"):
            with SafeOutput(tmp_path / "out"):
                pass
    with SafeOutput(tmp_path / "out"):  # released once the first run ends
        pass


def test_files_created_in_the_output_during_the_run_are_kept_and_so_is_the_result(tmp_path):
    out = tmp_path / "out"
    target = SafeOutput(out)
    with target as staging:
        (staging / "model.txt").write_text("result")
        out.mkdir()
        (out / "theirs.txt").write_text("written meanwhile")
        with pytest.raises(LeanbertError, match="the new result is kept in"):
            target.publish()
    assert contents(out) == {"theirs.txt": "written meanwhile"}
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.leanbert-unpublished-")]
    assert len(kept) == 1 and (kept[0] / "model.txt").read_text() == "result"


def test_an_interrupted_run_leaves_the_old_output_and_no_leftovers(tmp_path):
    out = tmp_path / "out"
    publish(out, {"a.txt": "old"})
    with pytest.raises(KeyboardInterrupt):
        with SafeOutput(out, force=True) as staging:
            (staging / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert contents(out) == {"a.txt": "old"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_interrupted_run_removes_the_parent_folders_it_made_but_nothing_else(tmp_path):
    """Parents the run created go when it ends with nothing in them; one that existed before, or that the user put a
    file in meanwhile, stays, and so does everything in it."""
    (tmp_path / "a").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with SafeOutput(tmp_path / "a" / "b" / "c" / "out") as staging:
            assert (tmp_path / "a" / "b" / "c").is_dir() and staging.parent == tmp_path / "a" / "b" / "c"
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]
    with pytest.raises(KeyboardInterrupt):
        with SafeOutput(tmp_path / "a" / "b" / "c" / "out"):
            (tmp_path / "a" / "b" / "notes.txt").write_text("the user's")
            raise KeyboardInterrupt
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/notes.txt"]
    assert (tmp_path / "a" / "b" / "notes.txt").read_text() == "the user's"
    publish(tmp_path / "x" / "y" / "out", {"a.txt": "done"})  # a published output keeps the folders it needs
    assert contents(tmp_path / "x" / "y" / "out") == {"a.txt": "done"}


def test_without_an_atomic_exchange_a_failed_rename_restores_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    publish(out, {"a.txt": "old"})
    monkeypatch.setattr(output_module, "exchange", lambda a, b: False)  # a system without renameat2
    real_rename = os.rename

    def rename(src, dst):
        if ".leanbert-new-" in str(src):
            raise OSError("disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(output_module.os, "rename", rename)
    with pytest.raises(LeanbertError, match=r"^cannot put the result in place of output '.*out': disk gone; the new "
                                            r"result is kept in '.*\.out\.leanbert-new-\d+'$") as error:
        publish(out, {"a.txt": "new"}, force=True)
    assert contents(out) == {"a.txt": "old"}
    kept = Path(str(error.value).rsplit("'", 2)[1])  # it could not be renamed either: marked where it was staged
    assert (kept / "a.txt").read_text() == "new" and (kept / output_module.UNPUBLISHED_MARK).is_file()
    monkeypatch.setattr(output_module.os, "rename", real_rename)
    with pytest.raises(LeanbertError, match="is left by an earlier run whose process had this one's id"):
        publish(out, {"a.txt": "newer"}, force=True)  # the same process again: the kept result holds its staging name
    assert (kept / "a.txt").read_text() == "new"
    kept.rename(tmp_path / "moved away")
    publish(out, {"a.txt": "new"}, force=True)
    assert contents(out) == {"a.txt": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["moved away", "out"]


def test_without_an_atomic_exchange_an_old_output_that_cannot_go_back_is_named(tmp_path, monkeypatch):
    """Both renames after moving the old output aside fail: neither the old nor the new result is lost, and the one
    line says where each stands."""
    out = tmp_path / "out"
    publish(out, {"a.txt": "old"})
    monkeypatch.setattr(output_module, "exchange", lambda a, b: False)  # a system without renameat2
    real_rename = os.rename

    def rename(src, dst):
        if ".leanbert-new-" in str(src) or ".leanbert-old-" in str(src):
            raise OSError(errno.EIO, "disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(output_module.os, "rename", rename)
    with pytest.raises(LeanbertError, match=r"^cannot put the result in place of output '.*out': disk gone; the "
                                            r"previous output stands in '.*\.out\.leanbert-old-\d+'; the new result "
                                            r"is kept in '.*\.out\.leanbert-new-\d+'$") as error:
        publish(out, {"a.txt": "new"}, force=True)
    named = str(error.value).split("'")
    assert not out.exists()
    assert contents(Path(named[3])) == {"a.txt": "old"} and (Path(named[5]) / "a.txt").read_text() == "new"


def test_the_mount_table_is_read_with_its_escapes_and_any_file_name_bytes():
    """The mount points `is_mount_point` compares with: the fifth field of each line of /proc/self/mountinfo, where
    a space is written \\040 and a backslash \\134, and names are bytes in no particular encoding."""
    table = (b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
             b"35 22 0:33 / /mnt/my\\040disk rw shared:9 - tmpfs tmpfs rw\n"
             b"36 22 8:1 /data /srv/caf\xe9\\134x rw - ext4 /dev/sdb1 rw\n"
             b"truncated line\n")
    assert output_module.mount_points(table) == {"/", "/mnt/my disk", os.fsdecode(b"/srv/caf\xe9\\x")}


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from leanbert.common import output
    out, moment = Path(sys.argv[1]), sys.argv[2]
    if moment == "between_renames":
        output.exchange = lambda a, b: False
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if ".leanbert-old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        output.os.rename = rename
    target = output.SafeOutput(out, force=True)
    with target as staging:
        (staging / "a.txt").write_text("new")
        if moment == "while_writing":
            os.kill(os.getpid(), signal.SIGKILL)
        target.publish()
""")


@pytest.mark.parametrize("moment", ["while_writing", "between_renames"])
def test_a_run_killed_at_the_worst_moment_is_recovered_by_the_next_one(tmp_path, moment):
    out = tmp_path / "out"
    publish(out, {"a.txt": "old"})
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out), moment], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert ".out.leanbert-lock" in leftovers and len(leftovers) == 3  # the lock, and the staging or the old copy
    if moment == "between_renames":
        assert not out.exists()  # the instant a kill can catch without renameat2; the next run puts it back

    target = SafeOutput(out, force=True)  # checks only: recovery happens when the output is claimed
    with target as staging:
        assert contents(out) == {"a.txt": "old"}
        (staging / "a.txt").write_text("newer")
        target.publish()
    assert contents(out) == {"a.txt": "newer"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recovery_touches_only_its_own_outputs_leftovers_whatever_the_name(tmp_path):
    """A dead run on `*` (a glob pattern as a name) must not take a live run's staging folder for its own."""
    with SafeOutput(tmp_path / "model") as live_staging:
        (tmp_path / ".*.leanbert-lock").write_text(json.dumps({"pid": 2**22 + 1, "host": "", "start": None}))
        (tmp_path / ".*.leanbert-lock").write_text("")  # garbled by a kill while it was written
        os.utime(tmp_path / ".*.leanbert-lock", (0, 0))  # ... long ago
        with SafeOutput(tmp_path / "*"):
            assert live_staging.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_checkpoint_folder_serves_one_run_at_a_time(tmp_path):
    first, second = CheckpointFolder(tmp_path / "ckpt"), CheckpointFolder(tmp_path / "ckpt")
    first.claim("test")
    with pytest.raises(LeanbertError, match="is in use by another leanbert run"):
        second.claim("test")
    first.release()
    second.claim("test")
    second.release()
    with pytest.raises(LeanbertError, match="does not name a folder of its own"):
        CheckpointFolder(".")
    with pytest.raises(LeanbertError, match="inside the output"):  # an output that does not exist yet counts
        CheckpointFolder(tmp_path / "out" / "ckpt", inputs=[("output", tmp_path / "out")])


def test_checkpoints_live_in_a_marked_folder_and_incomplete_ones_are_skipped(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(LeanbertError, match="holds files leanbert did not write"):
        CheckpointFolder(user)
    with pytest.raises(LeanbertError, match="contains the student"):
        CheckpointFolder(tmp_path, inputs=[("student", user)])
    assert (user / "thesis.tex").read_text() == "precious"

    folder = CheckpointFolder(tmp_path / "ckpt")
    folder.open("test")
    for step, complete in ((4, True), (8, True), (12, False)):
        path = tmp_path / "ckpt" / (f"step_{step}" if complete else f"step_{step}.partial")
        path.mkdir()
        (path / "progress.json").write_text(json.dumps({"step": step}))
    (tmp_path / "ckpt" / "step_8" / "progress.json").write_text('{"step": 8')  # killed mid-write
    path, progress = folder.latest()
    assert path.name == "step_4" and progress == {"step": 4}
    (tmp_path / "ckpt" / "notes.txt").write_text("the user's")
    folder.remove()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["notes.txt"]


def test_passages_are_a_bounded_seeded_sample_in_file_order(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"passage number {i}" for i in range(1000)) + "\n\n")
    sample, total = read_passages(text, limit=50, seed=3)
    assert total == 1000 and len(sample) == 50 and len(set(sample)) == 50
    numbers = [int(p.rsplit(" ", 1)[1]) for p in sample]
    assert numbers == sorted(numbers) and numbers[-1] > 500  # file order, drawn from the whole file
    assert read_passages(text, limit=50, seed=3)[0] == sample != read_passages(text, limit=50, seed=4)[0]
    assert read_passages(text, limit=5000)[0] == [f"passage number {i}" for i in range(1000)]


@pytest.mark.parametrize("case", ["missing", "empty", "undecodable", "empty_folder", "short"])
def test_unusable_text_is_refused_with_one_line(tmp_path, case):
    path = tmp_path / "text.txt"
    if case == "empty":
        path.write_text("\n \n")
    elif case == "undecodable":
        path.write_bytes("good line\n".encode() + b"\xff\xfe bad \x80\n")
    elif case == "empty_folder":
        path.mkdir()
    elif case == "short":
        path.write_text("too short\n")
    expected = {"missing": "not found", "empty": "holds no passages", "undecodable": "is not UTF-8 text (line 2",
                "empty_folder": "folder with no .txt files", "short": "no passages of 40 characters or more"}[case]
    with pytest.raises(LeanbertError, match=expected.replace("(", r"\(")):
        read_passages(path, min_chars=40 if case == "short" else 1)


def test_published_files_get_the_mode_the_users_umask_gives(tmp_path):
    """A file written private (as a temporary file renamed into place is) is published as readable as the user's
    umask makes new files, like every other file of the output."""
    previous = os.umask(0o027)
    try:
        target = SafeOutput(tmp_path / "out")
        with target as staging:
            (staging / "config.json").write_text("{}")
            fd = os.open(staging / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            target.publish()
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640, MANIFEST: 0o640}


@pytest.mark.parametrize("chunk", [3, 4, 7, 1 << 24])
def test_utf8_is_checked_through_the_whole_file_naming_the_line(tmp_path, chunk):
    """`check_utf8` reads in chunks: a character cut by a chunk's end is fine, and a bad byte is found on its line
    wherever the chunks fall (the line counted independently, by splitting the bytes)."""
    from leanbert.common.passages import check_utf8

    good = "naïve café\n€uro\n" * 3
    path = tmp_path / "text.txt"
    path.write_bytes(good.encode())
    check_utf8(path, "text", chunk)
    path.write_bytes(good.encode() + "ok\nbad \xe9 byte\n".encode("latin-1"))
    bad_line = next(i for i, line in enumerate(path.read_bytes().split(b"\n"), 1) if b"\xe9 " in line)
    with pytest.raises(LeanbertError, match=rf"is not UTF-8 text \(line {bad_line}:"):
        check_utf8(path, "text", chunk)
    path.write_bytes(good.encode() + "€".encode()[:2])
    with pytest.raises(LeanbertError, match=r"is not UTF-8 text \(line 7:"):
        check_utf8(path, "text", chunk)
