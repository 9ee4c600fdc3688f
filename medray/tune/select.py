"""From trial results to a decision: constraints, Pareto front, recommendation, command.

A trial record is a plain dict (see :func:`medray.tune.runner.trial_record`) with
``status`` ("ok", "failed", "stopped", "unfinished"), ``throughput_sps``,
``latency_ms`` (``per_sample_p50``/``p95``), ``metrics``, ``deltas`` (candidate −
baseline) and ``agreement``.  Everything here is pure and unit-tested by hand.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from typing import Any

from medray.tasks import task_class

log = logging.getLogger("medray.tune")

# Float noise: a drop of exactly the limit is allowed.
_EPS = 1e-12


def _get(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def metric_drop(trial: dict, metric: str) -> float | None:
    """baseline − candidate for ``metric`` (positive = the candidate is worse)."""
    delta = _get(trial, "deltas", metric)
    return None if delta is None else -float(delta)


def agreement_value(trial: dict) -> float | None:
    """Top-1 / per-label decision agreement (segmentation: mean Dice vs the baseline)."""
    a = trial.get("agreement") or {}
    for k in ("top1", "dice_vs_baseline_mean", "dice_mean"):
        if a.get(k) is not None:
            return float(a[k])
    return None


def violations(trial: dict, constraints: Any, task: str) -> list[str]:
    """What keeps ``trial`` from being recommended (empty = it meets every constraint).

    A limit whose quantity could not be computed (e.g. AUC with one class present) is
    a violation: a recommendation must not rest on a number nobody measured.
    """
    c = constraints if isinstance(constraints, dict) else vars(constraints)
    cls = task_class(task)
    out = []
    for metric, label, key in ((m.key, m.label, m.constraint) for m in cls.sweep_metrics if m.constraint):
        limit = c.get(key)
        if limit is None:
            continue
        drop = metric_drop(trial, metric)
        if drop is None:
            out.append(f"{label} drop not measurable ({key}={limit:g})")
        elif drop > limit + _EPS:
            out.append(f"{label} drop {drop:.4f} > {key}={limit:g}")
    if c.get("max_subgroup_auc_drop") is not None and cls.subgroup_delta:
        limit, delta = c["max_subgroup_auc_drop"], cls.subgroup_delta
        worst = trial.get("worst_subgroup")
        if not worst or worst.get(delta) is None:
            out.append(f"subgroup AUC drop not measurable (max_subgroup_auc_drop={limit:g}; set report.subgroups "
                       "or data.metadata)")
        elif -worst[delta] > limit + _EPS:
            out.append(f"{cls.sweep_metrics[0].label} drop {-worst[delta]:.4f} in subgroup {worst['attribute']}={worst['group']} "
                       f"(n={worst['n']}) > max_subgroup_auc_drop={limit:g}")
    if c.get("max_nonfinite") is not None and (trial.get("nonfinite") or 0) > c["max_nonfinite"]:
        out.append(f"{trial['nonfinite']} sample(s) with NaN/inf outputs > max_nonfinite={c['max_nonfinite']}")
    if c.get("min_agreement") is not None:
        ag = agreement_value(trial)
        if ag is None:
            out.append(f"agreement not measurable (min_agreement={c['min_agreement']:g})")
        elif ag < c["min_agreement"] - _EPS:
            out.append(f"agreement {ag:.4f} < min_agreement={c['min_agreement']:g}")
    return out


def objective_value(trial: dict, objective: str) -> float | None:
    """Higher is better: samples/s (end to end, or the inference stage's capacity), or
    −latency (ms per sample) for the latency objectives."""
    if objective in ("throughput", "capacity"):
        v = trial.get("throughput_sps" if objective == "throughput" else "inference_sps")
        return None if v is None else float(v)
    key = "per_sample_p95" if objective == "latency_p95" else "per_sample_p50"
    v = _get(trial, "latency_ms", key)
    return None if v is None else -float(v)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when maximising x and minimising y.

    ``j`` dominates ``i`` when it is at least as good on both and better on one;
    identical points are all kept.
    """
    front = []
    for i, (xi, yi) in enumerate(points):
        dominated = any(
            (xj >= xi and yj <= yi) and (xj > xi or yj < yi) for j, (xj, yj) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def select(trials: list[dict], constraints: Any, objective: str, task: str) -> dict:
    """Annotate ``trials`` in place (``violations``, ``feasible``, ``pareto``) and pick one.

    The Pareto front is over the completed trials: objective (throughput, or −latency)
    against the drop of the primary metric (AUC, or Dice).  The recommendation is the
    feasible trial with the best objective; ties go to the smaller drop, then the
    smaller batch and fewer streams (cheaper to serve).
    """
    primary = task_class(task).sweep_metrics[0].key
    done = []
    for t in trials:
        ok = t.get("status") == "ok"
        t["violations"] = violations(t, constraints, task) if ok else []
        t["feasible"] = ok and not t["violations"]
        t["pareto"] = False
        x = objective_value(t, objective) if ok else None
        y = metric_drop(t, primary) if ok else None
        if x is not None and y is not None and not math.isnan(x) and not math.isnan(y):
            done.append((t, x, y))
    for i in pareto_front([(x, y) for _, x, y in done]):
        done[i][0]["pareto"] = True
    feasible = [(t, x, y) for t, x, y in done if t["feasible"]]
    best = None
    if feasible:
        best = min(feasible, key=lambda r: (-r[1], r[2], r[0].get("batch_size", 0), r[0].get("streams", 0)))[0]
    reason = None
    if best is None:
        n_ok = sum(1 for t in trials if t.get("status") == "ok")
        reason = (
            "no trial completed" if not n_ok else f"none of the {n_ok} completed trials meets the constraints"
        )
    return {
        "primary_metric": primary,
        "objective": objective,
        "pareto": [t["trial_id"] for t, _, _ in done if t["pareto"]],
        "recommended": None if best is None else best["trial_id"],
        "reason": reason,
    }


# --------------------------------------------------------------------------- reproduce

# Groups of the evaluate config that a sweep shares and may have chosen.
_GROUPS = ("data", "model", "ray", "task")
_BARE = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_./:+-]*$")
_KEYWORDS = {"null", "true", "false", "nan", "inf", "-inf"}
_REQUIRED = ("data.root", "model.target", "model.path", "model.checkpoint")


def _fmt(v: Any) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if _BARE.match(s) and s.lower() not in _KEYWORDS:
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _compose_evaluate(overrides: list[str]):
    """The evaluate job's config for ``overrides``, composed the way the CLI does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medray.config import conf_dir, register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside jobs/sweep.py: same conf/ search path
        return compose(config_name="evaluate", overrides=overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="reproduce"):
        return compose(config_name="evaluate", overrides=overrides)


def _evaluate_dict(overrides: list[str]) -> dict[str, Any]:
    from medray.config import EvalConfig, to_config
    from medray.io import as_dict

    return _flatten(as_dict(to_config(_compose_evaluate(overrides), EvalConfig)))


def _composable(overrides: list[str], want: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The trial's values of the keys the group choices leave required (``model.path: ???``
    of model=hf, ``data.root`` of a dataset you hold), and the config composed with them."""
    from omegaconf import OmegaConf

    from medray.errors import ConfigError

    pinned = [f"{k}={_fmt(want[k])}" for k in sorted(OmegaConf.missing_keys(_compose_evaluate(overrides))) if k in want]
    for _ in range(len(want)):
        try:
            return pinned, _evaluate_dict(overrides + pinned)
        except ConfigError as e:  # "<key>=<value>: <fix>": the trial's own value of that key
            key = str(e).split("=", 1)[0]
            if key not in want or any(p.startswith(f"{key}=") for p in pinned):
                raise
            pinned.append(f"{key}={_fmt(want[key])}")
    raise ConfigError("reproduce command: the trial's config does not compose")


def reproduce_command(target, output_dir: str, choices: dict[str, str] | None = None) -> dict:
    """The ``python jobs/evaluate.py ...`` line whose validated config equals ``target``.

    ``target`` is the trial's :class:`~medray.config.EvalConfig`.  Group choices come from
    the sweep's Hydra run (``choices``) or, outside Hydra, from the names (``data.name``
    is its group option); every value that then still differs is added as ``key=value``,
    and the result is composed once more to check that it is exact.
    """
    from medray.config import conf_dir
    from medray.io import as_dict

    conf = conf_dir()
    want = _flatten(as_dict(target))
    want["output_dir"] = output_dir
    groups = []
    for g in _GROUPS:
        option = (choices or {}).get(g)
        if option is None:
            name = want.get(f"{g}.name") if g != "task" else want.get("task")
            option = name if name is not None and (conf / g / f"{name}.yaml").is_file() else None
        if option is not None:
            groups.append(f"{g}={option}")
    explicit = [
        f"backend={want['backend.name']}",
        f"precision={want['precision']}",
        f"device={want['device']}",
        f"batch_size={want['batch_size']}",
        f"streams={want['streams']}",
        # Always spelled out: the default comes from $MEDRAY_CACHE, which another shell may lack.
        f"cache_dir={_fmt(want['cache_dir'])}",
    ]
    # What a model source or dataset layout requires (model=python's target, imagefolder's
    # root...): without it the groups alone do not validate, and nothing could be compared.
    explicit += [f"{k}={_fmt(want[k])}" for k in _REQUIRED if want.get(k) is not None]
    overrides = groups + explicit
    note = None
    try:
        pinned, have = _composable(overrides + [f"output_dir={_fmt(output_dir)}"], want)
        overrides += pinned
        extra = []
        for k, v in want.items():
            if k == "output_dir" or (k in have and have[k] == v):
                continue
            extra.append(f"{'' if k in have else '+'}{k}={_fmt(v)}")
        overrides += extra + [f"output_dir={_fmt(output_dir)}"]
        check = _evaluate_dict(overrides)
        diff = sorted(k for k in set(want) | set(check) if want.get(k) != check.get(k))
        if diff:
            note = f"composed config differs from the trial's in {diff[:5]}"
    except Exception as e:  # the command is still the best description of the trial
        overrides.append(f"output_dir={_fmt(output_dir)}")
        note = f"could not be checked by composing it: {type(e).__name__}: {e}"
    if note:
        log.warning("reproduce command: %s", note)
    cmd = "python jobs/evaluate.py " + " ".join(shlex.quote(o) for o in overrides)
    return {"command": cmd, "overrides": overrides, "verified": note is None, "note": note}
