"""A MONAI bundle parsed by its own ``ConfigParser``: the objects its runner
(``python -m monai.bundle run``) would use, found where the runner finds them, and a
ConfigError naming each thing medray cannot honour.

The runner's ``SupervisedEvaluator`` iterates ``evaluator#val_data_loader`` (whose dataset
transform is the preprocessing), calls ``evaluator#inferer`` with ``evaluator#network``,
then applies ``evaluator#postprocessing``.  medray never builds the evaluator, its data
loader or its handlers (so neither pytorch-ignite nor the bundle's ``dataset_dir`` is
needed): it instantiates only the ids it takes, lazily (:meth:`Bundle.get`).
"""

from __future__ import annotations

import copy
import hashlib
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.specs import ModelSpec

CONFIGS = ("inference.json",)
# Files whose content is the bundle's contract besides its weights.
META_FILES = ("configs/metadata.json", "large_files.yml", "large_files.yaml", "large_files.json")
# The inferer's settings medray reads (SlidingWindowInferer's constructor arguments).
INFERER_KEYS = ("roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval")


def walk(cfg: Any, path: str = ""):
    """``(id, dict)`` for every dict of a raw config, ids in ConfigParser's ``#`` syntax."""
    if isinstance(cfg, dict):
        yield path, cfg
        items = cfg.items()
    elif isinstance(cfg, list):
        items = enumerate(cfg)
    else:
        return
    for k, v in items:
        yield from walk(v, f"{path}#{k}" if path else str(k))


def target_name(d: dict) -> str:
    """``"monai.handlers.CheckpointLoader"`` → ``"CheckpointLoader"``."""
    return str(d.get("_target_", "")).split(".")[-1]


def config_files(root: Path, configs) -> list[Path]:
    files = [root / "configs" / c for c in configs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"model.path={root}: no {', '.join(missing)}; a MONAI bundle has configs/inference.json "
                          "(model.configs names others, merged in order)")
    return files


def configs_sha256(root: Path, configs) -> str:
    """One digest of the bundle's configs and metadata (not of its weights: those are the
    checkpoint's own sha256)."""
    h = hashlib.sha256()
    for f in [*config_files(root, configs), *(root / m for m in META_FILES)]:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def check_large_files(root: Path) -> dict[str, str]:
    """``large_files.yml``: every listed file present locally has the listed hash (never
    downloaded); ``{relative path: hash type}`` of the files checked."""
    from monai.bundle import ConfigParser

    checked = {}
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        f = root / name
        if not f.is_file():
            continue
        for e in (ConfigParser.load_config_file(str(f)) or {}).get("large_files", []) or []:
            p = root / str(e.get("path", ""))
            if not e.get("path") or not p.is_file() or not e.get("hash_val"):
                continue
            kind = str(e.get("hash_type", "md5")).lower()
            if kind not in hashlib.algorithms_available:
                raise ConfigError(f"model.path={root}: {name} gives a {kind!r} hash for {e['path']}, which Python cannot compute")
            got = hashlib.new(kind, p.read_bytes()).hexdigest()
            if got != str(e["hash_val"]).lower():
                raise ConfigError(f"model.path={root}: {e['path']} has {kind} {got} but {name} expects {e['hash_val']}; "
                                  "the file is not the one the bundle was published with (medray never downloads: "
                                  "fetch it again with `python -m monai.bundle download`, or fix large_files.yml)")
            checked[str(e["path"])] = kind
    return checked


def check_evaluator(root: Path, ev: Any) -> str:
    """The evaluator's settings medray honours; its id prefix (``evaluator#``, or "" when
    the bundle has none and names network / inferer / postprocessing at the top)."""
    if not isinstance(ev, dict):
        return ""
    where = f"model.path={root}: configs: evaluator"
    if target_name(ev) != "SupervisedEvaluator":
        raise ConfigError(f"{where}#_target_={ev.get('_target_')!r}: medray runs a bundle's SupervisedEvaluator "
                          "iteration only (one network); an ensemble or custom evaluator is not supported")
    for k in ("prepare_batch", "iteration_update", "inferer_kwargs"):
        if ev.get(k) is not None:
            raise ConfigError(f"{where}#{k}={ev[k]!r}: a custom batch / forward path cannot be run with a backend's "
                              "session as the network; not supported")
    if str(ev.get("mode", "eval")).lower().split(".")[-1] != "eval":
        raise ConfigError(f"{where}#mode={ev['mode']!r}: only eval mode is supported")
    if ev.get("decollate", True) is False:
        raise ConfigError(f"{where}#decollate=false: not supported (postprocessing runs per case)")
    return "evaluator#"


def strip(t: Any, types: tuple) -> tuple[Any, list]:
    """``t`` (a transform or nested Compose) without the transforms of ``types``, and those
    removed (e.g. SaveImaged: medray writes the masks itself)."""
    from monai.transforms import Compose

    removed: list = []

    def walk_t(x):
        if isinstance(x, Compose):
            new = copy.copy(x)  # keeps map_items, unpack_items, lazy, log_stats
            new.transforms = [y for y in (walk_t(z) for z in x.transforms) if y is not None]
            return new
        if isinstance(x, types):
            removed.append(x)
            return None
        return x

    return walk_t(t), removed


def transform_names(t: Any) -> list[str]:
    """``["LoadImaged(image)", "Spacingd(image)", ...]`` for the report and the cache keys."""
    from monai.transforms import Compose, MapTransform

    items = t.flatten().transforms if isinstance(t, Compose) else [t]
    return [f"{type(x).__name__}({', '.join(map(str, x.keys))})" if isinstance(x, MapTransform) else type(x).__name__
            for x in items]


def plain(v: Any) -> Any:
    """Enums and tuples of an inferer's settings as JSON values."""
    v = getattr(v, "value", v)
    return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v


@dataclass
class Bundle:
    """The parsed bundle (objects instantiated on first use, cached by the parser)."""

    root: Path
    configs: list[str]
    parser: Any  # monai.bundle.ConfigParser
    prefix: str  # "evaluator#" or ""
    metadata: dict = field(default_factory=dict)

    def has(self, id_: str) -> bool:
        return self.full(id_) in self.parser

    def full(self, id_: str) -> str:
        return self.prefix + id_ if self.prefix and self.prefix + id_ in self.parser else id_

    def get(self, id_: str, default: Any = None) -> Any:
        """The object of ``evaluator#<id_>`` (else the top-level ``id_``), instantiated."""
        full = self.full(id_)
        if full not in self.parser:
            return default
        try:
            return self.parser.get_parsed_content(full)
        except Exception as e:  # the bundle's own code fails: name the id and its error
            raise ConfigError(f"model.path={self.root}: the bundle's {full} cannot be built "
                              f"({type(e).__name__}: {str(e).strip()[:300]})") from None

    @property
    def raw(self) -> dict:
        return self.parser.get("")

    def network_id(self) -> str:
        """The id the evaluator's network refers to (``network``: ``$@network_def.to(@device)``)."""
        ref = self.raw.get("evaluator", {}).get("network", "@network") if self.prefix else "@network"
        return str(ref).strip().lstrip("@") if str(ref).strip().startswith("@") else "network"

    @cached_property
    def preprocessing(self):
        """The dataset's transform (the object Invertd inverts with), else ``preprocessing``."""
        for id_ in ("dataset#transform", "preprocessing"):
            if id_ in self.parser:
                return self.get(id_)
        raise ConfigError(f"model.path={self.root}: the bundle has neither dataset#transform nor preprocessing")

    @cached_property
    def inferer(self):
        from monai.inferers import SlidingWindowInferer

        inf = self.get("inferer")
        if inf is None:
            raise ConfigError(f"model.path={self.root}: the bundle has no inferer")
        if not isinstance(inf, SlidingWindowInferer):
            raise ConfigError(f"model.path={self.root}: inferer {type(inf).__name__} is not supported: medray runs a "
                              "backend on fixed-size windows (SlidingWindowInferer and its subclasses); a whole-volume "
                              "SimpleInferer needs a model of any input size")
        if getattr(inf, "with_coord", False):
            raise ConfigError(f"model.path={self.root}: inferer with_coord=true hands window coordinates to the network; "
                              "a backend's session takes the image only: not supported")
        return inf

    def inferer_settings(self) -> dict:
        return {k: plain(getattr(self.inferer, k)) for k in INFERER_KEYS if hasattr(self.inferer, k)}

    @cached_property
    def postprocessing(self):
        """The postprocessing without SaveImage(d) (medray writes the masks itself)."""
        from monai.transforms import Compose, SaveImage, SaveImaged

        post = self.get("postprocessing")
        return strip(post, (SaveImaged, SaveImage))[0] if post is not None else Compose([])

    def amp(self) -> bool:
        return bool(self.get("amp", False))

    def data_format(self) -> tuple[str, dict, str, dict]:
        """metadata.json's network_data_format: the input key and entry, the output key and entry."""
        nd = self.metadata.get("network_data_format") or {}
        ins, outs = nd.get("inputs") or {}, nd.get("outputs") or {}
        ik, ok = next(iter(ins), "image"), next(iter(outs), "pred")
        return ik, ins.get(ik) or {}, ok, outs.get(ok) or {}

    def class_names(self) -> list[str]:
        """The output channels' names (``channel_def``), in channel order; [] if not given."""
        _, _, _, out = self.data_format()
        cdef = out.get("channel_def") or {}
        try:
            names = [str(cdef[k]) for k in sorted(cdef, key=int)]
        except ValueError:
            raise ConfigError(f"model.path={self.root}: metadata.json channel_def keys must be channel numbers, "
                              f"got {list(cdef)}") from None
        if names and out.get("num_channels") and len(names) != int(out["num_channels"]):
            raise ConfigError(f"model.path={self.root}: metadata.json names {len(names)} output channels (channel_def) "
                              f"but num_channels is {out['num_channels']}")
        return names


def open_bundle(path: str | Path, configs=CONFIGS) -> Bundle:
    """Parse the bundle (its configs merged in order, metadata.json under ``_meta_``), with
    ``bundle_root`` = its folder and ``device`` = the CPU (the backend decides where the
    network runs; the preprocessing and the windows run in CPU workers)."""
    from monai.bundle import ConfigParser

    root = Path(path).resolve()
    files = config_files(root, configs)
    if str(root) not in sys.path:  # as ConfigWorkflow does: bundles may `$import scripts` from their root
        sys.path.insert(1, str(root))
    parser = ConfigParser()
    try:
        parser.read_config(f=[str(f) for f in files])
        meta = root / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(f=str(meta))
    except Exception as e:
        raise ConfigError(f"model.path={root}: the bundle's configs cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
    updates = {"bundle_root": str(root)}
    if "device" in parser:
        updates["device"] = "$torch.device('cpu')"
    parser.update(updates)
    prefix = check_evaluator(root, parser.get("").get("evaluator"))
    return Bundle(root, list(configs), parser, prefix, dict(parser.get("_meta_", {}) or {}))


_OPEN: dict[tuple, Bundle] = {}


def bundle_of(model: ModelSpec) -> Bundle:
    """The parsed bundle of a model spec, once per process (read tasks, actors), refused if
    its configs changed since the run was prepared."""
    configs = tuple(model.net.get("configs") or CONFIGS)
    key = (model.path, configs, model.net.get("configs_sha256"))
    if key not in _OPEN:
        if configs_sha256(Path(model.path), configs) != model.net.get("configs_sha256"):
            raise ConfigError(f"model.path={model.path}: the bundle's configs changed since the run was prepared; "
                              "do not edit a bundle during a run")
        _OPEN[key] = open_bundle(model.path, configs)
    return _OPEN[key]
