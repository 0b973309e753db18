"""What the long benchmarks (convergence, downstream) share: running one of leanbert's commands so that an
interrupted run continues where it stopped, the spread over seeds, and the facts about the machine.

Each run is one command writing one output folder under a runs folder (`bench/runs/` by default, not tracked by
git): a finished run is never repeated, an interrupted one continues from its newest checkpoint (`--resume`), so
`make bench` can be stopped at any point and started again, in another sitting.
"""

import datetime
import fcntl
import hashlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import accelerate
import datasets
import torch
import transformers

import leanbert
from leanbert.common.checkpoints import CheckpointFolder
from leanbert.conversion import Conversion
from leanbert.healing import Healing
from bench.outputs import refuse, update_json, write_file, write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RUNS = Path(__file__).resolve().parent / "runs"
QUICK_RUNS = Path(__file__).resolve().parent / "runs-quick"  # --quick runs: apart, so they never count as the real ones


def defaults(cls) -> dict:
    """The keyword defaults of a class's constructor (`Conversion`, `Healing`): what its command runs with unless
    told otherwise."""
    return {name: parameter.default for name, parameter in inspect.signature(cls).parameters.items()
            if parameter.default is not inspect.Parameter.empty and name != "allow_pickle"}


DEFAULT_HEAL_STEPS = defaults(Healing)["steps"]
QUICK_CONVERSION = {"calibration_passages": 48, "refine_steps": 5}  # --quick conversions: a first look in seconds


def conversion_recipe(quick: bool, heal_steps: int) -> dict:
    """How a benchmark makes a converted model of all-MiniLM-L6-v2: every conversion and healing default (of
    `Conversion` and `Healing`, which the commands run with; `QUICK_CONVERSION` with --quick), the healing steps,
    and the seed of both (0). A result records it, so that one made by an earlier recipe is never taken for this
    one's."""
    conversion = {**defaults(Conversion), "seed": 0, **(QUICK_CONVERSION if quick else {})}
    return {"conversion": conversion, "healing": {**defaults(Healing), "steps": heal_steps, "seed": 0}}


def digest(recipe: dict) -> str:
    """A short digest of a recipe, for the folder names of the models it makes: another recipe makes other ones."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_command(command, args: list, output: Path, done_file: str, task: str | None = None,
                settings: dict | None = None) -> bool:
    """Run a leanbert command line (`command`: the `main(argv)` of `leanbert.commands.<name>`, in this process, so
    that a hundred short runs do not each pay for importing torch) with `args + ["--output", output]`, unless
    `output/done_file` exists (then it is skipped and False returned, after checking that the run recorded the
    `settings` given, in the file's "settings": a finished run made otherwise is refused, never mixed in); with
    `--resume` when an earlier attempt left a checkpoint in `<output>.<task>-checkpoints` (the training commands'
    default folder; `task`: pretrain, finetune, heal). Exits if the command fails (it has printed why)."""
    if finished(output, done_file, settings):
        return False
    resume = CheckpointFolder(output.with_name(f"{output.name}.{task}-checkpoints")).latest() is not None
    argv = [*map(str, args), "--output", str(output), *(["--resume"] if resume else [])]
    started = time.perf_counter()
    code = command(argv)
    record_time(output, time.perf_counter() - started)
    if code == 130:  # the command caught Ctrl-C (or SIGTERM): stop here too, without a traceback
        print(f"interrupted: {output.name} resumes from its newest checkpoint when the benchmark runs again",
              file=sys.stderr)
        raise SystemExit(130)
    if code != 0:  # the command has said why in one line; stop there with its code, without a traceback
        print(f"stopped: {command.__module__} {' '.join(argv)} exited with {code}", file=sys.stderr)
        raise SystemExit(code)
    return True


def finished(output: Path, done_file: str, settings: dict | None = None) -> bool:
    """Whether the run in `output` has finished (its `done_file` exists), refusing one made with other settings than
    `settings` (as its done file's "settings" records them): such a run is never mixed in."""
    if not (output / done_file).is_file():
        return False
    differ = differences(json.loads((output / done_file).read_text()).get("settings", {}), settings or {})
    if differ:
        refuse(f"{output} was made with other settings ({differ}): give another --runs-dir, or remove it to run it "
               "again")
    return True


def differences(recorded: dict, settings: dict) -> str:
    """The `settings` that `recorded` does not share, as "key: value there, value now; ..." ("" when none)."""
    return "; ".join(f"{key}: {recorded.get(key)!r} there, {value!r} now" for key, value in settings.items()
                     if recorded.get(key) != value)


@contextmanager
def running(runs_dir: Path):
    """Hold `runs_dir` for this process: a second benchmark running the same runs (which would train the same
    folders twice) is refused with one line. Reading the results (`--report-only`) needs no hold."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / ".bench-running.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            refuse(f"another benchmark is running the runs in {runs_dir}; wait for it (--report-only reads what it "
                   "has finished) or give another --runs-dir")
        yield


def use_device(device: str) -> None:
    """Run every command of this process on `device`: "cpu" keeps them on the CPU where a GPU exists (accelerate's
    ACCELERATE_USE_CPU). Nothing here comes from the Hub; the Makefile sets HF_HUB_OFFLINE=1 (it must be set
    before huggingface_hub is imported)."""
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"


def record_time(output: Path, seconds: float) -> None:
    """Add a command's wall time (start-up, data, training, evaluation, saving) to `wall_seconds.json` beside its
    output, summed over the sittings an interrupted run took: what the full benchmark costs."""
    def add(times: dict) -> dict:
        return {**times, output.name: round(times.get(output.name, 0.0) + seconds, 1)}

    update_json(output.parent, "wall_seconds.json", add)


def wall_seconds(output: Path) -> float | None:
    """The wall time `record_time` has summed for the run in `output` on this machine (None if it has none)."""
    path = output.parent / "wall_seconds.json"
    return json.loads(path.read_text()).get(output.name) if path.is_file() else None


def recorded(folder: Path, name: str, schema: int) -> dict:
    """`<name>.json` in `folder` as an earlier sitting of its benchmark left it ({} if there is none). Only
    bench/results outlives a machine: the runs folder (checkpoints and weights, too big for git) does not, so the
    long benchmarks record every finished run there, with its settings, and never repeat one recorded with the
    settings asked for, wherever its folder went. A file in another layout than this version's (`schema`), or not
    JSON, is refused rather than rewritten without the runs it records."""
    path = folder / f"{name}.json"
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        refuse(f"{path} is not the JSON a benchmark writes ({error}): move it away to run the benchmark")
    if not isinstance(results, dict) or results.get("schema") != schema:
        refuse(f"{path} was written by another version of the benchmark (layout "
               f"{results.get('schema') if isinstance(results, dict) else None}, this one writes {schema}): move it "
               "away, or give another --output-dir, to run it")
    return results


def spread(values: list) -> dict:
    """Mean, sample standard deviation, min and max of the seeds' values, and how many there are (None values, e.g.
    a target never reached, are counted but left out of the statistics)."""
    present = [v for v in values if v is not None]
    return {"mean": statistics.fmean(present) if present else None,
            "std": statistics.stdev(present) if len(present) > 1 else None,
            "min": min(present, default=None), "max": max(present, default=None),
            "n": len(values), "missing": len(values) - len(present)}


def signed(value: float, digits: int = 1) -> str:
    """`value` with its sign, at `digits` decimals, minus as "−" like every table here; one that rounds to zero is
    "+0.0", never "−0.0"."""
    return f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")


def seeds_text(count: int) -> str:
    """"1 seed", "2 seeds": how many seeds a figure stands on, as the reports say it."""
    return f"{count} seed{'' if count == 1 else 's'}"


def fmt_spread(entry: dict, digits: int = 3, scale: float = 1.0) -> str:
    """"mean ± std (n)" for a table cell, minus as "−" like `signed` (a mean that rounds to zero is never "−0.0");
    "–" when no seed has a value, and how many lack one."""
    if entry["mean"] is None:
        return "–"
    text = f"{round(entry['mean'] * scale, digits) + 0.0:.{digits}f}".replace("-", "−")
    if entry["std"] is not None:
        text += f" ± {entry['std'] * scale:.{digits}f}"
    if entry["missing"]:
        text += f" ({entry['n'] - entry['missing']} of {entry['n']})"
    return text


def save(results: dict, folder: Path, name: str, plot) -> dict:
    """`<name>.json` and `<name>.png` (drawn by `plot(results, path)`) in `folder`, each replaced atomically and only
    over a benchmark's own file (`outputs`; `claim(folder, saved(name))` checks that before the work)."""
    write_json(folder, f"{name}.json", results)
    write_file(folder, f"{name}.png", lambda path: plot(results, path))
    return results


def saved(name: str) -> list[str]:
    """The files `save(..., name, ...)` writes."""
    return [f"{name}.json", f"{name}.png"]


def machine(**extra) -> dict:
    """Date, versions and hardware, recorded with every result, and what a benchmark adds (`extra`: its device,
    dtype, allocator...). The one place every benchmark takes these from."""
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "leanbert": leanbert.__version__, "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    return {**info, **extra}


def shown(path: Path) -> str:
    """A path as results record it: relative to the repository when inside it or in the `shared` folder beside it
    (results travel with the repository, to clones elsewhere), else absolute. `located` reads it back."""
    path = Path(path).resolve()
    inside = path.is_relative_to(REPO) or path.is_relative_to(DATA.parent)
    return os.path.relpath(path, REPO) if inside else str(path)


def located(recorded: str) -> Path:
    return REPO / recorded  # an absolute path stays as it is


def command_line() -> str:
    """The command that produced a result, as a user would type it from the repository root: `python -m <module>
    ...` for a module run with -m (the benchmarks: `python -m bench.bench_convergence --quick`), else the script."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])
