"""cluster.yaml: valid for Ray's cluster launcher (checked offline, no AWS call), closed to
the internet but for SSH, token authentication on, pinned versions, every key commented."""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import pytest
import yaml
from helpers import REPO

CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (boto3 to AWS included) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster.yaml validation tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def launcher_check(config: dict) -> dict:
    """What `ray up` does to the file before it talks to the cloud: merge the provider's
    defaults.yaml, then validate against ray/autoscaler/ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_validates_against_rays_cluster_launcher_schema(raw, no_network):
    import ray.autoscaler

    assert (Path(ray.autoscaler.__file__).parent / "ray-schema.json").is_file()  # Ray's own schema
    prepared = launcher_check(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    types = prepared["available_node_types"]
    assert set(types) == {"head", "gpu_worker"}
    assert types["gpu_worker"]["min_workers"] == 0 < types["gpu_worker"]["max_workers"] <= prepared["max_workers"]
    assert re.match(r"g[4-6]\w*\.", types["gpu_worker"]["node_config"]["InstanceType"])  # a GPU instance family
    assert not re.match(r"[gp]\d", types["head"]["node_config"]["InstanceType"])  # head: no GPU


def test_the_validator_does_reject_a_broken_file(raw, no_network):
    import jsonschema

    bad = copy.deepcopy(raw)
    bad["max_worker"] = 3  # typo: unknown top-level key
    with pytest.raises(jsonschema.ValidationError):
        launcher_check(bad)
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        launcher_check(bad)


def security_problems(cfg: dict) -> list[str]:
    """Ways the file would expose Ray's jobs API (which runs arbitrary code)."""
    problems = []
    for rule in cfg.get("provider", {}).get("security_group", {}).get("IpPermissions", []) or []:
        if not (rule.get("FromPort") == rule.get("ToPort") == 22):
            problems.append(f"security group opens ports {rule.get('FromPort')}-{rule.get('ToPort')}")
    head = " ".join(cfg.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in head or "0.0.0.0" in head:
        problems.append("dashboard not bound to the head's loopback")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{key}: ray start without RAY_AUTH_MODE=token")
    if "~/.ray/auth_token" not in (cfg.get("file_mounts") or {}):
        problems.append("the auth token is not mounted on the nodes")
    if not any("RAY_AUTH_MODE=token" in c for c in cfg.get("initialization_commands", [])):
        problems.append("shells on the nodes do not enable token authentication")
    return problems


def test_only_ssh_is_open_and_token_auth_stays_on(raw):
    assert security_problems(raw) == []
    sg = raw["provider"]["security_group"]
    assert "IpPermissions" not in sg  # only the launcher's defaults: SSH + intra-cluster
    opened = copy.deepcopy(raw)
    opened["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ]
    assert security_problems(opened) == ["security group opens ports 8265-8265"]
    public = copy.deepcopy(raw)
    public["head_start_ray_commands"] = [c.replace("127.0.0.1 --metrics", "0.0.0.0 --metrics") for c in raw["head_start_ray_commands"]]
    assert "dashboard not bound to the head's loopback" in security_problems(public)


def test_pinned_versions_and_gpu_extra(raw):
    import ray

    setup = " ".join(raw["setup_commands"])
    pins = re.findall(r'ray\[[^\]]*default[^\]]*\]==([\d.]+)', setup)
    assert pins == [ray.__version__], "the nodes must run the Ray version of this machine"
    pyproject = (REPO / "pyproject.toml").read_text()
    minor = ".".join(ray.__version__.split(".")[:2])
    assert f"ray[default,data,tune]=={minor}.*" in pyproject
    assert '-e "$HOME/medray[trt]"' in setup and "--python 3.11" in setup
    assert raw["file_mounts"]["~/medray"] == "."


def test_jobs_reach_the_cluster_with_the_cluster_config_group():
    ray_group = yaml.safe_load((REPO / "conf" / "ray" / "cluster.yaml").read_text())
    assert ray_group["address"] == "auto"
    header = CLUSTER_YAML.read_text().split("\n\n")[0]
    assert "ray job submit" in header and "ray=cluster" in header and "ray dashboard cluster.yaml" in header


_KEY = re.compile(r"^(\s*)(- )?([A-Za-z_~\"][^:#]*?):(\s|$)")


def test_every_key_is_commented():
    """Each `key:` line has a comment on it or on the line(s) just above (the file is
    the documentation of the cluster)."""
    lines = CLUSTER_YAML.read_text().splitlines()
    missing = []
    in_block = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if in_block is not None:  # inside a `>-` folded scalar: not keys
            if stripped and indent <= in_block:
                in_block = None
            else:
                continue
        m = _KEY.match(line)
        if not m or stripped.startswith("#"):
            continue
        if stripped.endswith((">-", "|", ">")):
            in_block = indent
        if "#" in line:
            continue
        prev = lines[i - 1].strip() if i else ""
        if not prev.startswith("#"):
            missing.append(f"line {i + 1}: {stripped}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)
