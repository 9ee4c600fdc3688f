"""A small CPU sweep end to end on the 2-CPU Ray: table, Pareto front, failing trials,
interruption and resume, and the recommended config reproduced by the evaluate job."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import TINY_ARCH, TINY_SIZE

from medray.backends.torch.config import TorchConfig
from medray.config import ConfigError, RayConfig
from medray.data.config import DataConfig
from medray.models.config import ModelConfig
from medray.tune.config import ConstraintsConfig, SweepConfig, SweepJobConfig
from medray.tune.select import metric_drop, pareto_front

pytestmark = pytest.mark.slow


def make_cfg(root: Path, checkpoint, out: Path, **sweep) -> SweepJobConfig:
    grid = dict(
        # torch fp16 is not supported on CPU: its two trials must fail with the reason.
        backends={"torch": ["fp32", "fp16"], "onnxruntime": ["fp32"]},
        batch_sizes=[4, 16],
        streams=[1],
        limit=40,
        bootstrap_samples=200,
    )
    grid.update(sweep)
    return SweepJobConfig(
        backend=TorchConfig(),
        data=DataConfig(name="synthetic", root=str(root / "data"), n_train=8, n_calibration=8, n_test=60, image_size=64),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(checkpoint), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2),
        batch_size=8,
        output_dir=str(out),
        cache_dir=str(root / "cache"),
        warmup_batches=1,
        sweep=SweepConfig(**grid),
        # Random weights: both outcomes present, any AUC; agreement is what the tiny model shows.
        constraints=ConstraintsConfig(max_auc_drop=0.01, min_agreement=0.9),
    )


def _interrupt_after(exp: Path, n: int, timeout: float = 300) -> threading.Thread:
    """Like a user's Ctrl-C once ``n`` trials have written their results: Tune stops on
    SIGUSR1 (its handler is installed while it runs) and saves the experiment state."""

    def watch():
        t0 = time.time()
        while time.time() - t0 < timeout:
            # Only while Tune's handler is installed: SIGUSR1's default action would kill
            # pytest itself (and with it the whole test run) if Tune had already returned.
            if len(list(exp.glob("*/checkpoint_*"))) >= n and signal.getsignal(signal.SIGUSR1) not in (
                    signal.SIG_DFL, signal.SIG_IGN, None):
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


_CHILD = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[4], sys.argv[5]]
from test_sweep import _interrupt_after, make_cfg
from medray.tune.runner import run
root, ckpt, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
watcher = _interrupt_after(out / "tune", 2)
doc = run(make_cfg(root, ckpt, out))
watcher.join(timeout=1)
keep = ("status", "n_unfinished", "trials", "baseline")
print("RESULT " + json.dumps({k: doc[k] for k in keep}, default=str))
"""


def _interrupted_in_a_fresh_process(root: Path, checkpoint, out: Path) -> dict:
    """The interrupted first sweep, in its own interpreter with its own embedded Ray (as a
    user's Ctrl-C'd `jobs/sweep.py`): signalling the test process itself, after the whole
    suite's libraries are loaded in it, once took pytest down with a segfault."""
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    p = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(checkpoint), str(out), str(here.parent), str(here)],
                       capture_output=True, text=True, timeout=900)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, p.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_sweep_interrupt_resume_table_and_reproduce(ray_local, tmp_path_factory, tiny_checkpoint):
    from medray.tune.runner import run

    root = tmp_path_factory.mktemp("sweep")
    out = root / "out"
    cfg = make_cfg(root, tiny_checkpoint, out)

    first = _interrupted_in_a_fresh_process(root, tiny_checkpoint, out)
    assert first["status"] == "interrupted"
    done_first = {t["trial_id"]: t["run_uid"] for t in first["trials"] if t["status"] == "ok"}
    assert len(done_first) >= 2 and first["n_unfinished"] >= 1
    assert "sweep.resume=true" in (out / "sweep.md").read_text()

    # A second sweep into the same folder without resume is refused.
    with pytest.raises(ConfigError, match="already holds a sweep"):
        run(cfg)

    doc = run(make_cfg(root, tiny_checkpoint, out, resume=True))
    assert doc["status"] == "complete" and doc["n_unfinished"] == 0
    trials = {t["trial_id"]: t for t in doc["trials"]}
    assert len(trials) == 6
    # Finished trials were kept, not redone (same run id), and the baseline was reused.
    for tid, uid in done_first.items():
        assert trials[tid]["run_uid"] == uid
    assert doc["baseline"]["throughput_sps"] == first["baseline"]["throughput_sps"]

    # The unsupported pair failed with the validation message; the sweep went on.
    failed = [t for t in doc["trials"] if t["status"] == "failed"]
    assert sorted(t["label"] for t in failed) == ["torch-fp16-b16-s1", "torch-fp16-b4-s1"]
    for t in failed:
        assert "precision='fp16': backend=torch on device=cpu supports ['fp32', 'bf16']" in t["error"]
    ok = [t for t in doc["trials"] if t["status"] == "ok"]
    assert sorted(t["label"] for t in ok) == [
        "onnxruntime-fp32-b16-s1", "onnxruntime-fp32-b4-s1", "torch-fp32-b16-s1", "torch-fp32-b4-s1"]
    for t in ok:
        assert t["n_samples"] == 40 and t["throughput_sps"] > 0 and t["latency_ms"]["per_sample_p95"] > 0
        assert t["agreement"]["top1"] >= 0.9 and abs(t["deltas"]["auc_macro"]) < 1e-3

    # Decoded once: the baseline decoded the samples, every trial read them from the cache.
    assert doc["read_cache"]["baseline"]["misses"] == 40
    assert doc["read_cache"]["trial_misses"] == 0 and doc["read_cache"]["trial_hits"] == 40 * len(ok)
    # Pareto front recomputed by hand from the reported numbers.
    pts = [(t["throughput_sps"], metric_drop(t, "auc_macro")) for t in ok]
    want = sorted(ok[i]["trial_id"] for i in pareto_front(pts))
    assert sorted(doc["pareto"]) == want and want
    # Recommended: the fastest trial meeting the constraints.
    feasible = [t for t in ok if not t["violations"]]
    best = max(feasible, key=lambda t: t["throughput_sps"])
    assert doc["recommended"]["trial_id"] == best["trial_id"]

    # sweep.md: the ok trials fastest first, Pareto members starred, failures with reasons.
    md = (out / "sweep.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[1].replace("**", "").replace(" (recommended)", "") for r in rows] == [
        t["label"] for t in sorted(ok, key=lambda t: -t["throughput_sps"])]
    assert sum("★" in r for r in rows) == len(want)
    assert "torch-fp16-b4-s1 | failed | ConfigError: precision='fp16'" in md
    assert (out / "pareto.png").stat().st_size > 10_000
    st = doc["recommended"]["statistics"]
    assert st["auc_macro"]["difference"]["method"] == "DeLong" and st["n"] == 40
    assert json.loads((out / "sweep.json").read_text())["recommended"]["trial_id"] == best["trial_id"]

    # The reproduce command, composed like the CLI does, gives the same metrics.
    rep = doc["recommended"]["reproduce"]
    assert rep["verified"], rep["note"]
    from medray.config import EvalConfig, to_config
    from medray.pipeline.evaluate import run as evaluate
    from medray.tune.select import _compose_evaluate

    # (baseline=null: the candidate's metrics do not depend on it, and it halves the run.)
    argv = rep["command"].split()[2:] + ["baseline=null"]
    ev = evaluate(to_config(_compose_evaluate(argv), EvalConfig))
    cand = next(r for r in ev["runs"] if r["name"] == f"{best['backend']}-{best['precision']}")
    for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro"):
        assert cand["metrics"][k] == pytest.approx(best["metrics"][k], abs=1e-9), k
    assert cand["n_samples"] == best["n_samples"]


def test_sweep_config_errors():
    with pytest.raises(ConfigError, match=r"sweep.backends='nosuch': available backends"):
        SweepConfig(backends={"nosuch": ["fp32"]})
    with pytest.raises(ConfigError, match=r"sweep.backends.torch='fp8': precisions are"):
        SweepConfig(backends={"torch": ["fp8"]})
    with pytest.raises(ConfigError, match="sweep.objective='speed'"):
        SweepConfig(objective="speed")
    with pytest.raises(ConfigError, match=r"baseline=None: a sweep compares every trial"):
        SweepJobConfig(backend=TorchConfig(), baseline=None)
    with pytest.raises(ConfigError, match="use sweep.resume=true"):
        SweepJobConfig(backend=TorchConfig(), resume=True)


def test_sweep_resume_needs_a_sweep(tmp_path):
    from medray.tune.state import check_output_dir as _check_output_dir

    cfg = SweepJobConfig(backend=TorchConfig(), output_dir=str(tmp_path), sweep=SweepConfig(resume=True))
    with pytest.raises(ConfigError, match="holds no sweep"):
        _check_output_dir(cfg, tmp_path)


def test_segmentation_sweep_on_the_cpu_grid(ray_local, tmp_path, unet_checkpoint):
    """`jobs/sweep.py task=segmentation sweep=cpu`: every CPU backend × precision (INT8
    calibrated on ROI windows) against one baseline, ranked with the Dice drop."""
    from helpers import REPO
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.tune.config import SweepJobConfig
    from medray.tune.runner import run

    register_configs()
    overrides = ["task=segmentation", "sweep=cpu", "sweep.batch_sizes=[2]", "sweep.limit=null", "sweep.bootstrap_samples=200",
                 "data.n_train=1", "data.n_calibration=2", "data.n_test=3", "data.image_size=24", "model.name=tiny",
                 "model.arch=monai_unet", f"model.checkpoint={unet_checkpoint}", "model.in_chans=1",
                 "calibration.num_samples=8", "warmup_batches=0", "constraints.min_agreement=0.5",
                 f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_config(compose(config_name="sweep", overrides=overrides), SweepJobConfig)
    doc = run(cfg)
    ok = [t for t in doc["trials"] if t["status"] == "ok"]
    assert sorted(t["label"] for t in ok) == ["onnxruntime-fp32-b2-s1", "onnxruntime-int8-b2-s1", "openvino-fp32-b2-s1",
                                             "openvino-int8-b2-s1", "torch-fp32-b2-s1"], doc["trials"]
    for t in ok:
        assert t["n_samples"] == 3 and t["metrics"]["dice_mean"] is not None and "dice_mean" in t["deltas"]
        assert t["agreement"]["dice_mean"] is not None and t["throughput_sps"] > 0
    # fp32 backends reproduce the baseline's masks
    for t in ok:
        if t["precision"] == "fp32":
            assert t["agreement"]["voxel_agreement_min"] > 0.999 and abs(t["deltas"]["dice_mean"]) < 1e-3
    # Pareto front on (throughput, Dice drop), recomputed from the reported numbers
    pts = [(t["throughput_sps"], metric_drop(t, "dice_mean")) for t in ok]
    assert sorted(doc["pareto"]) == sorted(ok[i]["trial_id"] for i in pareto_front(pts))
    assert doc["selection"]["primary_metric"] == "dice_mean"
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "| Dice (%) | ΔDice (pp) |" in md and "Throughput (cases/s)" in md
    rec = doc["recommended"]
    assert rec is not None and rec["reproduce"]["verified"], rec["reproduce"]
    assert "sliding_window.sw_batch_size=2" in rec["reproduce"]["command"]
    assert rec["statistics"]["dice_mean"]["difference"]["method"] == "paired bootstrap"
