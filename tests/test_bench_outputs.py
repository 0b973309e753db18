"""The benchmarks treat a results folder as leanbert's commands treat an output: they replace only files a benchmark
wrote and nobody changed since, decide that before any work, write atomically, and say no in one line with exit
code 2. Run through the real scripts (bench_parameters, bench_convergence, report.py) on temporary folders."""

import json
import os

import pytest
import torch

from bench import bench_convergence, bench_parameters, outputs, report, runs


def refused(capsys, call) -> str:
    """Run `call`, which must stop with exit code 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def threads():
    """The benchmarks set their process's device and thread count: restored for the other tests."""
    environment, count = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(environment)
    torch.set_num_threads(count)


def test_a_benchmark_replaces_its_own_unchanged_results_and_nothing_else(tmp_path, capsys):
    bench_parameters.main(["--output-dir", tmp_path])
    first = (tmp_path / "parameters.json").read_text()
    bench_parameters.main(["--output-dir", tmp_path])  # its own files, unchanged: replaced
    assert json.loads((tmp_path / "parameters.json").read_text())["sizes"] == json.loads(first)["sizes"]
    edited = (tmp_path / "parameters.md").read_text() + "\nmy notes\n"
    (tmp_path / "parameters.md").write_text(edited)  # edited by hand since: no longer the benchmark's to replace
    line = refused(capsys, lambda: bench_parameters.main(["--output-dir", tmp_path]))
    assert str(tmp_path / "parameters.md") in line
    assert (tmp_path / "parameters.md").read_text() == edited
    # what is left: the results, the ledger, no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == [outputs.LEDGER, "parameters.json", "parameters.md"]


def test_a_users_file_stops_a_benchmark_before_any_work(tmp_path, capsys, threads):
    results, runs_dir = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    (results / "convergence.png").write_bytes(b"my own plot")
    args = ["--quick", "--models", "BERT", "--seeds", "0", "--runs-dir", str(runs_dir), "--output-dir", str(results)]
    line = refused(capsys, lambda: bench_convergence.main(args))
    assert "convergence.png" in line
    assert (results / "convergence.png").read_bytes() == b"my own plot"
    assert not runs_dir.exists()  # refused before any pretraining: nothing was run or written
    (results / "convergence.png").unlink()
    runs_dir.mkdir()
    (runs_dir / "wall_seconds.json").write_text("{}")  # a runs folder holding somebody's file of the same name
    refused(capsys, lambda: bench_convergence.main(args))
    assert (runs_dir / "wall_seconds.json").read_text() == "{}" and not any(results.iterdir())


def test_report_replaces_only_a_report_it_generated(tmp_path, capsys):
    mine = tmp_path / "BENCHMARKS.md"
    mine.write_text("# my benchmarks\n")
    line = refused(capsys, lambda: report.main(["--results", str(tmp_path), "--output", str(mine)]))
    assert str(mine) in line and mine.read_text() == "# my benchmarks\n"
    generated = tmp_path / "generated.md"
    for _ in range(2):  # written, then replaced: it is the generator's own
        text = report.main(["--results", str(tmp_path), "--output", str(generated)])
    assert generated.read_text() == text and text.splitlines()[0] == outputs.GENERATED


def test_two_benchmarks_cannot_run_one_runs_folder(tmp_path, capsys):
    with runs.running(tmp_path):
        line = refused(capsys, lambda: runs.running(tmp_path).__enter__())
        assert "another benchmark is running" in line and str(tmp_path) in line
    with runs.running(tmp_path):  # released when the first is done
        pass


def test_updates_of_one_ledger_file_add_up(tmp_path):
    runs.record_time(tmp_path / "a", 1.5)
    runs.record_time(tmp_path / "b", 2.0)
    runs.record_time(tmp_path / "a", 3.0)  # a second sitting of the same run
    assert json.loads((tmp_path / "wall_seconds.json").read_text()) == {"a": 4.5, "b": 2.0}
    assert runs.wall_seconds(tmp_path / "a") == 4.5 and runs.wall_seconds(tmp_path / "c") is None
    ledger = json.loads((tmp_path / outputs.LEDGER).read_text())["files"]
    assert ledger == {"wall_seconds.json": outputs.sha256_file(tmp_path / "wall_seconds.json")}


def test_ctrl_c_stops_a_benchmark_with_one_line_and_code_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        outputs.run_main(interrupted)
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted: what finished is saved; run the same command again to continue"]
