"""The entry point fails fast, before Ray starts, on bad configs (subprocess, as a user)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


@pytest.mark.parametrize(
    "args, expect",
    [
        (["backend=nosuch"], "Could not find 'backend/nosuch'"),
        (["backend=onnxruntime", "precision=bf16"], "precision='bf16': backend=onnxruntime on device=cpu supports"),
        (["batch_size=0"], "batch_size=0"),
        (["device=cuda", "backend=torch", "precision=fp16"], "device=cuda: the embedded local Ray would have no GPU"),
        (["quantization.repair=true", "quantization.max_drop=0.01"],
         "quantization.repair=True: the repair keeps layers of an INT8 model in higher precision: add precision=int8"),
        (["precision=int8", "quantization.repair=true"], "quantization.repair=True: the repair needs a limit"),
    ],
)
def test_bad_config_fails_fast_without_starting_ray(args, expect, tmp_path):
    if "device=cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), *args, f"output_dir={tmp_path}/out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode != 0
    assert expect in p.stderr + p.stdout
    assert "ray.init" not in p.stderr and "Started a local Ray instance" not in p.stderr


def test_train_job_refuses_a_user_checkpoint(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), f"model.checkpoint={REPO / 'pyproject.toml'}", f"output_dir={tmp_path}/o"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 2
    assert "jobs/train.py trains the demo model only" in p.stderr


def test_bad_input_exits_with_the_file_and_the_hint(tmp_path, tiny_checkpoint):
    """A manifest row whose file is gone: found on the driver, clean message, exit 3."""
    from helpers import TINY_ARCH, TINY_SIZE

    from medray.data.synthetic import ensure_synthetic
    from medray.data.table import read_manifest_dir

    root = ensure_synthetic("binary", tmp_path / "data", n_train=4, n_calibration=4, n_test=12, image_size=64)
    gone = read_manifest_dir(root).split("test")["path"].iloc[3]
    Path(gone).unlink()
    p = subprocess.run(
        [
            sys.executable, str(REPO / "jobs" / "evaluate.py"), "data=synthetic", f"data.root={root}",
            "data.n_train=4", "data.n_calibration=4", "data.n_test=12", "data.image_size=64",
            "model.name=tiny", f"model.arch={TINY_ARCH}", f"model.checkpoint={tiny_checkpoint}",
            f"model.input_size={TINY_SIZE}", "baseline=null", f"output_dir={tmp_path}/o",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert p.returncode == 3, p.stderr[-2000:]
    assert "medray: bad input:" in p.stderr and Path(gone).name in p.stderr and "data.on_error=skip" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_default_run_console_is_quiet_and_the_log_has_everything(tmp_path, tiny_checkpoint):
    """Data and model ready: ≤ 25 console lines plus the progress lines (baseline and
    candidate, one per run when not a TTY); Ray Data's and the workers' output in evaluate.log."""
    from helpers import TINY_ARCH, TINY_SIZE

    from medray.data.synthetic import ensure_synthetic

    sizes = {"n_train": 4, "n_calibration": 8, "n_test": 64, "image_size": 48}
    root = ensure_synthetic("binary", tmp_path / "data", **sizes)
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), f"data.root={root}",
         *[f"data.{k}={v}" for k, v in sizes.items()], "model.name=tiny", f"model.arch={TINY_ARCH}",
         f"model.checkpoint={tiny_checkpoint}", f"model.input_size={TINY_SIZE}", f"output_dir={tmp_path}/o",
         f"cache_dir={tmp_path}/cache"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = (p.stdout + p.stderr).splitlines()
    progress = [x for x in lines if "[medray.progress]" in x]
    steps = [x for x in lines if "[medray.progress]" not in x]
    assert len(steps) <= 25, "\n".join(steps)
    # One final line per run; periodic lines before it come with the clock (a loaded machine
    # prints more of them), so only their form is checked.
    done = [x for x in progress if "(100%)" in x]
    assert [x.split(" - ", 1)[1].split(":")[0] for x in done] == ["torch-fp32", "onnxruntime-fp32"], progress
    assert "torch-fp32: 64/64 images (100%)" in done[0]
    assert all("ETA" in x for x in progress if x not in done), progress
    assert not any("Starting execution of Dataset" in x or "Tasks:" in x or "pid=" in x for x in lines)
    log = (tmp_path / "o" / "evaluate.log").read_text()
    assert "Starting execution of Dataset" in log and "MapBatches(Predictor)" in log
    assert "torch-fp32: loaded in" in log  # an actor's own log line, routed from the worker
    assert "[medray.execute]" in log and "64/64 images" in log
