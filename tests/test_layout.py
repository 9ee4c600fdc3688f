"""The package's shape: imports point one way (down the layers the README states), no
import cycle, no module over 450 lines, task and backend names only where they belong,
one list of backend names, conf/ found installed.

Every import counts: module-level, function-level and ``TYPE_CHECKING`` ones alike (an
annotation that reaches up is still a dependency that reaches up)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

PKG = REPO / "medray"


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """medray module → the medray modules it imports anywhere (functions and
    ``TYPE_CHECKING`` blocks included)."""
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "medray"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medray":
                for a in node.names:  # `from medray.x import y`: y may be a module of its own
                    deps.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# The layers, bottom first (README "Layout"): a module imports only from its own layer
# or below.  Top-level modules and packages of medray/ by their first name.
LAYERS = [
    {"errors", "io", "format", "figures", "machine", "console", "monitoring"},  # leaves
    {"specs", "results"},  # what crosses into the actors and comes back
    {"metrics"},
    {"data"},
    {"models"},
    {"backends"},
    {"tasks"},
    {"report", "tracking", "doctor"},
    {"config"},  # the composition root of the run configs
    {"pipeline"},
    {"tune"},
    {"cli"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/test_layout.py (add its package to LAYERS and the README)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() if a != "medray" for b in deps
                  if b != "medray" and layer_of(b) > layer_of(a))


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"medray.data.x": {"medray.tasks.y"}, "medray.tasks.y": {"medray.data.x"}}) == [
        "medray.data.x -> medray.tasks.y"]


def test_imports_point_down_the_layers_type_checking_ones_included():
    """e.g. data, models, backends and metrics never import tasks, pipeline, report, tune or
    the doctor; tasks never import pipeline, report or tune; nothing below the composition
    root imports medray.config."""
    graph = import_graph()
    assert "medray.tasks.base" in graph and "medray.config" in graph["medray.tune.config"]
    assert upward_imports(graph) == []


def test_no_module_is_over_450_lines_and_config_is_only_composition():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 450} == {}
    assert sizes["medray/config.py"] <= 300


def _compared_strings(path: Path) -> set[str]:
    """Strings a module compares something with (``==``, ``!=``, ``in``, ``not in``)."""
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Compare):
            for side in [n.left, *n.comparators]:
                elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                out |= {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return out


def test_task_names_are_compared_only_inside_tasks():
    from medray.tasks import TASKS

    found = {str(p.relative_to(REPO)): sorted(_compared_strings(p) & set(TASKS))
             for p in PKG.rglob("*.py") if "tasks" not in p.relative_to(PKG).parts}
    assert {k: v for k, v in found.items() if v} == {}


def _call_strings(path: Path) -> set[str]:
    """Strings a module passes as call arguments (``get_backend("x")``, ``RunName("x", ...)``)."""
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Call):
            out |= {a.value for a in [*n.args, *(k.value for k in n.keywords)]
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return out


def test_backends_are_named_only_inside_backends():
    """No code outside backends/ branches on a backend's name or picks one by name (the
    doctor, the baseline, the sweep ask the registry); configs (``*/config.py``) may give
    defaults.  A library that shares a backend's name (torch) may be listed as a library."""
    from medray.backends import REGISTRY

    found = {}
    for p in PKG.rglob("*.py"):
        if "backends" in p.relative_to(PKG).parts or p.name == "config.py":
            continue
        hits = sorted((_compared_strings(p) | _call_strings(p)) & set(REGISTRY))
        if hits:
            found[str(p.relative_to(REPO))] = hits
    assert found == {}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_medray_has_no_import_cycle():
    graph = import_graph()
    assert "medray.pipeline.execute" in graph and "medray.tasks.segmentation" in graph  # the walk sees the package
    assert cycles(graph) == []


def test_backend_names_agree_in_registry_yaml_and_readme():
    from medray.backends import REGISTRY, config_class

    names = set(REGISTRY)
    assert {p.stem for p in (REPO / "conf" / "backend").glob("*.yaml")} == names
    for name in names:
        assert config_class(name)().name == name  # the options class answers to its registry key
    # README: the `backend=` row of the CLI table lists every backend, and only them.
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `backend=` |"))
    assert set(re.findall(r"`(\w+)`", row.split("|")[2])) == names, row


def test_every_conf_group_is_installed_with_the_package():
    """conf/ is found installed as from a checkout: each group folder is in pyproject's data-files."""
    import tomllib

    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir()}
    assert set(data_files) == {"share/medray/conf"} | {f"share/medray/conf/{g}" for g in groups}
    for dest, patterns in data_files.items():
        assert patterns == [f"conf{dest.removeprefix('share/medray/conf')}/*.yaml"]


def test_conf_dir_checkout_installed_and_override(tmp_path, monkeypatch):
    import sysconfig

    from medray.config import CONF_SHARE, ConfigError, conf_dir

    assert conf_dir() == REPO / "conf"
    installed = Path(tmp_path, "prefix").joinpath(*CONF_SHARE)
    installed.mkdir(parents=True)
    (installed / "evaluate.yaml").write_text("{}")
    real = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda k, *a, **kw: str(tmp_path / "prefix") if k == "data" else real(k, *a, **kw))
    monkeypatch.setattr("medray.config.__file__", str(tmp_path / "site-packages" / "medray" / "config.py"))
    assert conf_dir() == installed
    monkeypatch.setenv("MEDRAY_CONF", str(REPO / "conf"))
    assert conf_dir() == REPO / "conf"
    monkeypatch.setenv("MEDRAY_CONF", str(tmp_path / "nowhere"))
    (installed / "evaluate.yaml").unlink()
    with pytest.raises(ConfigError, match="conf/: no evaluate.yaml in"):
        conf_dir()


@pytest.mark.slow
def test_the_wheel_carries_conf(tmp_path):
    import shutil

    # Built from a copy: setuptools writes build/ and egg-info beside the sources.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".pytest_cache", "build", "outputs", "*.egg-info",
                                                              "__pycache__", ".ruff_cache"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = next(tmp_path.glob("medray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for rel in ("evaluate.yaml", "backend/trt.yaml", "task/segmentation.yaml"):
        assert any(n.endswith(f".data/data/share/medray/conf/{rel}") for n in names), rel
