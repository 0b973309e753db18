"""The package's layers, as README's Layout states them, read from the source (no import runs): the model files at the
bottom, then `common`, `publishing`, then `conversion`, `training` and `export` (which do not import each other),
`healing`, then `commands`; a package reaches another through its `__init__`; no module imports the package root
inside a function; only the commands are run with `python -m`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "leanbert"
# subpackage -> layer; the flat model files (configuration_*, modeling_*, transformers_compat, architectures) are 0
LAYERS = {"common": 1, "publishing": 2, "conversion": 3, "training": 3, "export": 3, "healing": 4, "commands": 5}
# subpackages whose modules are each an API of their own (a library of pieces), not internals behind an __init__
OPEN = {"common"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not `.__init__`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported leanbert module, names taken from it, whether the import is inside a function) for every import of
    leanbert in the module `name`; `from package import module` counts as an import of the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    in_function = {id(node) for function in ast.walk(tree)
                   if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(function) if node is not function}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], id(node) in in_function) for alias in node.names
                      if alias.name.split(".")[0] == "leanbert"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "leanbert":
                continue
            submodules = [alias.name for alias in node.names
                          if f"{target}.{alias.name}" in ALL and alias.name not in bound(target)]
            found += [(f"{target}.{module}", [], id(node) in in_function) for module in submodules]
            names = [alias.name for alias in node.names if alias.name not in submodules]
            if names:
                found.append((target, names, id(node) in in_function))
    return found


def bound(package: str) -> set[str]:
    """The names a package's `__init__` binds at its top (`leanbert.export` binds `export`, the function, over the
    module of that name)."""
    path = ALL.get(package)
    if path is None or path.name != "__init__.py":
        return set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {alias.asname or alias.name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package root
    return LAYERS[parts[1]] if parts[1] in LAYERS else 0


def room(module: str) -> str | None:
    """The subpackage a module belongs to, or None for the root and the flat model files."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


ALL = modules()


def test_every_subpackage_has_a_layer():
    """A new subpackage is placed in the layers here (and in README's Layout) rather than left unchecked."""
    found = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert found == set(LAYERS)


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_point_down_and_through_the_front_door(name):
    own_layer, own_room = layer(name), room(name)
    for target, names, in_function in imports(name, ALL[name]):
        where = f"{name} imports {target}" + (f" ({', '.join(names)})" if names else "")
        if target == "leanbert":
            assert name != "leanbert" and names == ["__version__"] and not in_function, \
                f"{where}: from the package root only its version, at the top of the module"
            continue
        assert not in_function, f"{where} inside a function"
        if own_layer is None:  # the root registers the declared architectures, nothing else
            assert target == "leanbert.architectures", where
            continue
        target_layer, target_room = layer(target), room(target)
        assert target_layer <= own_layer, f"{where}: a lower layer imports a higher one"
        if target_room is not None and target_room != own_room:
            assert target_layer < own_layer, f"{where}: siblings of one layer do not import each other"
            if target_room not in OPEN:
                assert target == f"leanbert.{target_room}", f"{where}: use the public API of leanbert.{target_room}"


def test_only_the_commands_run_as_python_m():
    """`python -m leanbert.commands.<name>` runs a command; no package below them has a `__main__` that would
    import them from beneath."""
    assert not list(PACKAGE.rglob("__main__.py"))
    runnable = sorted(name for name, path in ALL.items() if "__main__" in path.read_text(encoding="utf-8")
                      and 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"))
    assert runnable and all(name.startswith("leanbert.commands.") for name in runnable), runnable


def test_training_loads_pretraining_and_fine_tuning_on_first_use():
    """`leanbert.training` gives `pretrain`, `finetune`, `MODEL_TYPES` and `TASKS` when they are read, so healing (on
    the loop alone) does not load `datasets` or scikit-learn."""
    script = ("import sys, leanbert.healing, leanbert.training as training\n"
              "before = sorted(name for name in ('datasets', 'sklearn') if name in sys.modules)\n"
              "names = [name for name in ('pretrain', 'finetune', 'MODEL_TYPES', 'TASKS') if name in dir(training)]\n"
              "loaded = [training.pretrain.__module__, training.finetune.__module__,\n"
              "          'sym_bert' in training.MODEL_TYPES, 'rte' in training.TASKS]\n"
              "print(before, names, loaded, sorted(name for name in ('datasets', 'sklearn') if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == ("[] ['pretrain', 'finetune', 'MODEL_TYPES', 'TASKS'] "
                                           "['leanbert.training.masked_lm', 'leanbert.training.classification', True, "
                                           "True] ['datasets', 'sklearn']")
