"""``model=bundle``: a MONAI bundle folder checked against the dataset before Ray starts, as
a :class:`~medray.specs.ModelSpec` of the ``bundle`` recipe.

Everything the bundle declares is either honoured or a ConfigError naming it: its weights
(``large_files.yml`` hashes; the CheckpointLoader's file, or ``model.ts``), its network
(built here once with its weights and run on one blank window), its inferer (a sliding
window), its class names against the dataset's labels, ``amp`` (recorded: what the runner
would run on a GPU and what medray runs), ``eval_metrics`` (the published numbers the
report checks the baseline against)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.models.config import ModelRequest
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models.bundle")

# metadata.json eval_metrics names → medray's metric keys (MONAI's MeanDice key in the zoo:
# "mean_dice" / "val_mean_dice"; classification bundles: AUC, accuracy).
METRIC_NAMES = {"mean_dice": "dice_mean", "val_mean_dice": "dice_mean", "dice": "dice_mean", "meandice": "dice_mean",
                "dice_mean": "dice_mean", "auc": "auc_macro", "mean_auc": "auc_macro", "val_auc": "auc_macro",
                "auc_macro": "auc_macro", "accuracy": "accuracy", "acc": "accuracy", "val_acc": "accuracy"}


def published(metadata: dict, where: str) -> dict:
    """metadata.json's ``eval_metrics`` as ``{metric: {"value", "from"}}`` (names medray does
    not compute are logged and left out)."""
    out = {}
    for name, v in (metadata.get("eval_metrics") or {}).items():
        key = METRIC_NAMES.get(str(name).lower())
        if key is None or not isinstance(v, (int, float)) or isinstance(v, bool):
            log.info("%s: eval_metrics.%s=%r is not a metric medray computes; not compared", where, name, v)
            continue
        out[key] = {"value": float(v), "from": f"metadata.json eval_metrics.{name}"}
    return out


def amp_note(amp: bool) -> str:
    if not amp:
        return "amp: false (the runner runs the network in fp32)."
    return ("amp: true — MONAI's runner wraps the network in torch.autocast('cuda'): fp16 on a GPU (there, its numbers "
            "are those of baseline=torch-fp16), a no-op on the CPU (fp32, as torch-fp32 runs here); every run executes "
            "the precision it names.")


def weights_file(b, network_id: str, weights: str) -> tuple[str, dict]:
    """The file of ``model.weights`` and the CheckpointLoader's rule for it."""
    from medray.models.bundle.network import WEIGHTS, checkpoint_loader

    loader = checkpoint_loader(b, network_id)
    path = loader["load_path"] if weights == "pt" else str(b.root / WEIGHTS["ts"])
    if not Path(path).is_file():
        fix = ("its CheckpointLoader loads it" if weights == "pt" else "model.weights=ts loads the TorchScript export; "
               "use model.weights=pt (models/model.pt)")
        raise ConfigError(f"model.path={b.root}: no weights file {path} ({fix}); medray never downloads: fetch the bundle "
                          "with `python -m monai.bundle download`")
    return path, loader


def resolve_bundle(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """The bundle at ``model.path`` (see the module docstring)."""
    from medray.io import file_sha256
    from medray.models.bundle.parse import CONFIGS, check_large_files, configs_sha256, open_bundle, transform_names
    from medray.models.resolve import check_class_count, take_label_names
    from medray.models.volume import probe
    from medray.specs import ModelSpec

    m = cfg.model
    if not m.trust_checkpoint:  # ModelConfig refuses it first; a resolver called directly too
        from medray.models.bundle import TRUST_HINT

        raise ConfigError(f"model.trust_checkpoint=False: {TRUST_HINT}")
    root = Path(m.path)
    hashed = check_large_files(root)
    b = open_bundle(root)
    where = f"model.path={root}"
    weights = m.weights or "pt"
    network_id = b.network_id()
    checkpoint, loader = weights_file(b, network_id, weights)
    settings = b.inferer_settings()
    roi = [int(v) for v in (cfg.roi_size or settings.get("roi_size") or [])]
    if len(roi) != 3 or min(roi) < 1:
        raise ConfigError(f"{where}: the inferer's roi_size {settings.get('roi_size')} is not a 3-D window; set "
                          "sliding_window.roi_size=[D, H, W]")
    _, inp, _, _ = b.data_format()
    names = b.class_names()
    pp = {"recipe": "bundle", "bundle": str(b.metadata.get("name") or root.name), "version": b.metadata.get("version"),
          "transforms": transform_names(b.preprocessing), "postprocessing": transform_names(b.postprocessing),
          "inferer": type(b.inferer).__name__, "amp": b.amp(), "amp_note": amp_note(b.amp()),
          "configs_sha256": configs_sha256(root, CONFIGS)}
    net = {"weights": weights, "configs": list(CONFIGS), "configs_sha256": pp["configs_sha256"], "network_id": network_id,
           "loader": loader, "inferer": settings, "amp": pp["amp"], "image_key": "image", "pred_key": "pred",
           "class_names": names, "large_files": hashed}
    spec = ModelSpec(arch=f"bundle:{pp['bundle']}", num_classes=0, in_chans=int(inp.get("num_channels") or 1),
                     input_size=roi[0], checkpoint=str(Path(checkpoint).resolve()), checkpoint_sha256=file_sha256(checkpoint),
                     trust_checkpoint=True, task="segmentation", spatial=tuple(roi), net=net, source=m.source,
                     path=str(root), preprocess=pp, recipe="bundle", expected=published(b.metadata, where))
    k = probe(spec, where)[1]  # the network built with its weights (a checkpoint that does not fit fails here)
    if names and len(names) != k:
        raise ConfigError(f"{where}: metadata.json names {len(names)} output channels {names} but the network gives {k}")
    take_label_names(table, k, names, where)
    spec.num_classes = check_class_count(m, table)
    if table.channels and len(table.channels) != spec.in_chans:
        raise ConfigError(f"{where}: the network takes {spec.in_chans} channel(s), dataset {table.name} has "
                          f"{len(table.channels)} {list(table.channels)}")
    log.info("model=bundle: %s %s, %s (%s), windows %s, %d → %d channels %s; %s", pp["bundle"], pp["version"] or "",
             network_id, Path(checkpoint).name, roi, spec.in_chans, k, names or "", pp["amp_note"])
    return spec
