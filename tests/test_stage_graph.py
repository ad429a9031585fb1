"""talbench.pipeline.stage_graph: dvc.yaml expanded exactly as DVC expands it, with deps that cover the code each stage runs."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from talbench.pipeline import stage_graph, upstream

ROOT = Path(__file__).resolve().parents[1]


# -- DVC's own view ------------------------------------------------------------------------------


def _project(folder: Path, dvc_yaml: str, params: dict | None = None) -> Path:
    """A fresh git + DVC project holding `dvc_yaml` and `params` (params.yaml): all DVC needs to expand it."""
    from dvc.repo import Repo

    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    Repo.init(str(folder)).close()
    (folder / "dvc.yaml").write_text(dvc_yaml, encoding="utf-8")
    if params is not None:
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return folder


def _dvc_stages(root: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (cmd, deps, outs incl. metrics and plots), from DVC's index of root/dvc.yaml (params deps left out)."""
    from dvc.dependency import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            stage.name: (
                stage.cmd,
                sorted(str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)),
                sorted(str(o.def_path) for o in stage.outs),
            )
            for stage in repo.index.stages
            if Path(stage.path).resolve() == (root / "dvc.yaml").resolve()
        }


def _ours(root: Path, params: dict) -> dict[str, tuple[str, list[str], list[str]]]:
    return {s.name: (s.cmd, sorted(s.deps), sorted(s.outs)) for s in stage_graph(params, root / "dvc.yaml")}


def _assert_same(ours: dict, dvc: dict) -> None:
    assert sorted(ours) == sorted(dvc)
    for name in dvc:
        for what, mine, theirs in zip(("cmd", "deps", "outs"), ours[name], dvc[name]):
            assert mine == theirs, f"{name}: {what} differs from DVC's: {mine} != {theirs}"


def _shipped_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def test_stage_graph_of_the_repository_equals_dvc_expansion(tmp_path):
    project = _project(tmp_path / "p", (ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    params = _shipped_params()
    dvc = _dvc_stages(project)
    _assert_same(_ours(project, params), dvc)
    assert len(dvc) == 2 * len(params["pipeline"]["datasets"]) + 2 * len(params["experiments"]) + 1


def test_stage_graph_equals_dvc_expansion_for_other_params(tmp_path):
    """Two experiments on one dataset, real data: names, commands and paths follow params, as in DVC."""
    params = {
        "data": {"source": "real", "root": "data"},
        "synthetic": {"seed": 3, "scale": "small"},
        "datasets": {"toy": {"root": "toy", "tiou": [0.5, 0.95, 10]}},
        "pipeline": {"datasets": ["toy"]},
        "experiments": {
            "toy-a": {"dataset": "toy", "features": ["f1"], "config": "configs/toy_a.yaml"},
            "toy-b+c": {"dataset": "toy", "task": "verb", "features": ["f1", "f2"], "config": "configs/toy_b.yaml"},
        },
        "published": {},
    }
    project = _project(tmp_path / "p", (ROOT / "dvc.yaml").read_text(encoding="utf-8"), params)
    dvc = _dvc_stages(project)
    _assert_same(_ours(project, params), dvc)
    assert {"fetch@toy", "validate@toy", "train@toy-a", "evaluate@toy-b+c", "report"} <= set(dvc)
    assert "data/real/toy" in dvc["train@toy-b+c"][1] and "configs/toy_b.yaml" in dvc["train@toy-b+c"][1]


def test_stage_graph_follows_dvc_naming_and_interpolation_rules(tmp_path):
    """foreach over a list of mappings (index names), plain values, an inline mapping; booleans, list indexing."""
    dvc_yaml = """\
stages:
  a:
    foreach: ${runs}
    do:
      cmd: python run.py ${item.name} --fast ${item.fast} --first ${item.files[1]}
      deps:
        - ${item.files[0]}
        - src/${item.name}.py
      outs:
        - out/${item.name}:
            persist: true
  b:
    foreach: ${names}
    do:
      cmd: echo ${item} ${flag}
      plots:
        - plots/${item}.csv:
            x: step
  c:
    foreach:
      p: 1
      q: 2
    do:
      cmd: echo ${key} ${item}
      deps: [out]
      metrics:
        - c/${key}.json:
            cache: false
  d:
    cmd: echo done
    deps: [c]
"""
    params = {
        "runs": [{"name": "r1", "fast": True, "files": ["in/1", "in/2"]}, {"name": "r2", "fast": False, "files": ["in/3", "in/4"]}],
        "names": ["x", 2],
        "flag": False,
    }
    project = _project(tmp_path / "p", dvc_yaml, params)
    dvc = _dvc_stages(project)
    _assert_same(_ours(project, params), dvc)
    assert {"a@0", "a@1", "b@x", "b@2", "c@p", "c@q", "d"} == set(dvc)
    assert dvc["a@0"][0] == "python run.py r1 --fast true --first in/2"


def test_stage_graph_refuses_what_it_does_not_expand(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  m:\n    matrix: {x: [1, 2]}\n    cmd: echo ${item.x}\n")
    with pytest.raises(ValueError, match="matrix"):
        stage_graph({}, tmp_path / "dvc.yaml")


def test_upstream_follows_data_through_the_benchmark():
    graph = {s.name: s for s in stage_graph(_shipped_params(), ROOT / "dvc.yaml")}
    names = lambda stage: sorted(s.name for s in upstream(list(graph.values()), graph[stage]))  # noqa: E731
    assert names("fetch@thumos14") == []
    assert names("validate@thumos14") == ["fetch@thumos14"]
    assert names("train@thumos14-i3d") == ["fetch@thumos14", "validate@thumos14"]
    assert names("evaluate@thumos14-i3d") == ["fetch@thumos14", "train@thumos14-i3d"]
    assert {"evaluate@thumos14-i3d", "train@thumos14-i3d", "validate@thumos14"} <= set(names("report"))


# -- deps cover the code each stage runs ---------------------------------------------------------


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path) -> set[str]:
    """Every `import talbench...` / `from talbench... import x` anywhere in the module (functions included).

    For `from a.b import x`, both `a.b` and `a.b.x` are returned: x may be a submodule.
    """
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name == "talbench" or name.startswith("talbench.")}


def _code_closure(component: Path) -> set[Path]:
    """The component and every talbench module it imports, transitively (statically, through talbench only)."""
    seen, todo = {component}, [component]
    while todo:
        for name in _imported_names(todo.pop()):
            module = _module_file(name)
            if module is not None and module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


def _covered(path: str, deps: tuple[str, ...]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def _component(stage) -> Path:
    path = ROOT / "components" / f"{stage.stage}.py"
    assert f"components/{stage.stage}.py" in stage.cmd.split(), f"{stage.name}: expected its command to run {path.name}"
    return path


def test_parent_packages_import_no_talbench_code():
    """Importing talbench.x.y also runs talbench/__init__.py and talbench/x/__init__.py. The closure
    follows what is imported by name, which is complete while the packages it reaches only as
    parents import nothing of talbench (talbench.tracking and talbench.models are imported by name)."""
    closures = [_code_closure(_component(s)) for s in stage_graph(_shipped_params(), ROOT / "dvc.yaml")]
    for closure in closures:
        parents = {folder / "__init__.py" for path in closure for folder in path.parents if folder.is_relative_to(ROOT / "talbench")}
        for init in sorted(parents - closure):
            assert not _imported_names(init), f"{init.relative_to(ROOT)} imports talbench code: follow parent packages in _code_closure"


@pytest.mark.parametrize("stage", stage_graph(_shipped_params(), ROOT / "dvc.yaml"), ids=lambda s: s.name)
def test_deps_cover_the_code_the_stage_runs(stage):
    code = sorted(p.relative_to(ROOT).as_posix() for p in _code_closure(_component(stage)))
    missing = [path for path in code if not _covered(path, stage.deps)]
    assert not missing, f"{stage.name}: dvc.yaml deps do not cover code it imports: {missing}"
    # and no code dep it does not import (a needless dep re-runs the stage for nothing)
    code_deps = [d for d in stage.deps if d.startswith(("talbench/", "components/")) or d == "talbench"]
    needless = [dep for dep in code_deps if not any(_covered(path, (dep,)) for path in code)]
    assert not needless, f"{stage.name}: dvc.yaml deps it never imports: {needless}"


def test_code_folders_in_deps_ignore_bytecode(tmp_path):
    """A folder dep is hashed with every file in it: __pycache__ written by a later stage would change it."""
    import shutil
    import subprocess

    from dvc.repo import Repo

    folders = sorted({d for s in stage_graph(_shipped_params(), ROOT / "dvc.yaml") for d in s.deps
                      if d.startswith("talbench") and (ROOT / d).is_dir()})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    for folder in folders:  # the project's ignore rules over a copy of each folder with bytecode in it
        (tmp_path / folder / "__pycache__").mkdir(parents=True)
        (tmp_path / folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    with Repo.init(str(tmp_path)) as repo:
        seen = [f for f in folders if not repo.dvcignore.is_ignored(repo.fs, str(tmp_path / f / "__pycache__" / "x.cpython-311.pyc"))]
    assert not seen, f"add `__pycache__/` to .dvcignore: bytecode would change the hash of the folder deps {seen}"
