"""python -m medray.doctor on this machine: the table, the JSON (one record per backend ×
precision × device), a missing backend, a failing precision, an unsupported one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from medray.doctor import checks
from medray.doctor.checks import Record, TinyModel, capability, pairs, run_check


def doctor(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "medray.doctor", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def hide(tmp_path, module: str) -> dict:
    """A PYTHONPATH whose first entry shadows ``module`` with one that cannot be imported,
    as on a node where it is not installed."""
    d = tmp_path / f"no-{module}"
    (d / module).mkdir(parents=True, exist_ok=True)
    (d / module / "__init__.py").write_text(f'raise ImportError("No module named {module} (hidden by the test)")\n')
    return {"PYTHONPATH": os.pathsep.join([str(d), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_cli_table_and_json_on_this_machine(tmp_path):
    out = tmp_path / "doctor.json"
    r = doctor("--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    got = [(c["backend"], c["precision"], c["device"]) for c in doc["checks"]]
    assert got == pairs() and len(set(got)) == len(got)  # one record per triple, every triple
    by = {(c["backend"], c["precision"], c["device"]): c for c in doc["checks"]}
    for key in (("torch", "fp32", "cpu"), ("onnxruntime", "fp32", "cpu"), ("onnxruntime", "int8", "cpu"),
                ("openvino", "fp32", "cpu"), ("openvino", "int8", "cpu")):
        c = by[key]
        assert c["status"] == "ok", c
        assert c["detail"]["executed"] == key[1]
        if key[1] == "fp32":
            assert c["detail"]["max_abs_prob_diff"] <= 1e-4
    if not doc["gpus"]["available"]:
        cuda = [c for c in doc["checks"] if c["device"] == "cuda"]
        assert cuda and all(c["status"] == "missing" and c["fix"] for c in cuda)
        assert "no CUDA GPU" in by[("torch", "fp32", "cuda")]["reason"]
    if not doc["libraries"]["tensorrt"]["installed"]:
        trt = by[("trt", "fp16", "cuda")]
        assert trt["status"] == "missing" and "tensorrt cannot be imported" in trt["reason"]
        assert "pip install -e '.[trt]'" in trt["fix"]
    assert set(doc["cpu"]["flags"]) >= {"avx512f", "avx512_vnni", "amx_bf16"}
    table = r.stdout
    assert "Backend × precision × device" in table and "openvino     int8       cpu     ok" in table
    assert "tensorrt     missing — pip install -e '.[trt]'" in table or doc["libraries"]["tensorrt"]["installed"]


def test_missing_backend_is_named_with_its_fix_and_exits_1_when_asked_for(tmp_path):
    r = doctor("--backend", "openvino", "--quick", "--json", str(tmp_path / "d.json"), env=hide(tmp_path, "openvino"))
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads((tmp_path / "d.json").read_text())
    assert {c["status"] for c in doc["checks"]} == {"missing"}
    c = doc["checks"][0]
    assert "openvino cannot be imported" in c["reason"] and "hidden by the test" in c["reason"]
    assert c["fix"] == "pip install -e '.[openvino]'"
    assert "openvino     missing — pip install -e '.[openvino]'" in r.stdout
    # Not asked for: a missing library is reported, not an error.
    assert doctor("--backend", "torch", "--quick", env=hide(tmp_path, "openvino")).returncode == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return TinyModel(tmp_path_factory.mktemp("doctor"))


def test_a_precision_that_computes_something_else_fails(tiny, monkeypatch):
    from medray.backends.onnxruntime.backend import OnnxRuntimeBackend

    good = run_check(capability("onnxruntime", "fp32", "cpu"), tiny)
    assert good.status == "ok" and good.detail["max_abs_prob_diff"] < 1e-5
    wrong = OnnxRuntimeBackend._infer
    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", lambda self, x: wrong(self, x) + np.array([0.0, 0.5], np.float32))
    bad = run_check(capability("onnxruntime", "fp32", "cpu"), tiny)
    assert bad.status == "failed" and "max |Δprob| vs torch fp32" in bad.reason and "> 0.0001 for fp32" in bad.reason

    def boom(self):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(OnnxRuntimeBackend, "_load", boom)
    r = run_check(capability("onnxruntime", "int8", "cpu"), tiny)
    assert r.status == "failed" and "insufficient for CUDA runtime" in r.reason


def test_hardware_without_the_precision_is_unsupported(monkeypatch):
    import medray.backends.openvino.backend as ovb

    monkeypatch.setitem(ovb.CAPABILITY, "bf16", "NO_SUCH_CAPABILITY")
    r = capability("openvino", "bf16", "cpu")
    assert r.status == "unsupported" and "lists no NO_SUCH_CAPABILITY" in r.reason and r.fix
    monkeypatch.setattr(checks.env, "gpus", lambda: {"available": True, "devices": [{"name": "Tesla T4", "index": 0}]})
    monkeypatch.setattr(checks.env, "compute_capability", lambda index=0: (7, 5))
    r = capability("torch", "bf16", "cuda")
    assert r.status == "unsupported" and "compute capability >= 8.0, Tesla T4 has 7.5" in r.reason


def test_exit_code_rules():
    from medray.doctor.report import exit_code

    ok = Record("torch", "fp32", "cpu").as_dict()
    missing = {**Record("trt", "fp16", "cuda").as_dict(), "status": "missing"}
    assert exit_code({"checks": [ok, missing]}, None) == 0
    assert exit_code({"checks": [ok, missing]}, ["trt"]) == 1
    assert exit_code({"checks": [ok, {**ok, "status": "failed"}]}, None) == 1
