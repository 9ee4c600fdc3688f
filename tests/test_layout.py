"""The package's shape: no import cycle, one list of backend names, conf/ found installed."""

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


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """medray module → the medray modules it imports anywhere (functions included)."""
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
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


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_medray_has_no_import_cycle():
    graph = import_graph()
    assert "medray.pipeline.execute" in graph and "medray.tasks.segmentation" in graph  # the walk sees the package
    assert cycles(graph) == []


def test_backend_names_agree_in_registry_yaml_readme_and_config():
    from medray.backends import REGISTRY, config_class
    from medray.config import BACKEND_CONFIGS

    names = set(REGISTRY)
    assert {p.stem for p in (REPO / "conf" / "backend").glob("*.yaml")} == names
    assert set(BACKEND_CONFIGS) == names
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
