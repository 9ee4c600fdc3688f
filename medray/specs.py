"""What crosses into the actors: plain dataclasses and absolute paths, never Hydra objects.

:class:`ModelSpec` (how to rebuild the model), :class:`RunSpec` (one evaluated
configuration) and :class:`RunName` (the ``<backend>-<precision>`` name of a run, built
and parsed only here).  What comes back is :mod:`medray.results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from medray.errors import fail


class BackendOptions(Protocol):
    """What a run spec needs of a backend's options (``medray.backends.config.BackendConfig``)."""

    name: str
    threads: int | None


class RunName(NamedTuple):
    """``<backend>-<precision>``: the name of a run in outputs, logs and sweeps."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend}-{self.precision}"

    @classmethod
    def parse(cls, value: str, key: str = "baseline") -> RunName:
        """``"torch-fp32"`` → ``RunName("torch", "fp32")``; a ConfigError naming ``key`` otherwise."""
        parts = str(value).split("-")
        if len(parts) != 2 or not all(parts):
            fail(key, value, "use <backend>-<precision>, e.g. torch-fp32, or null to skip the baseline")
        return cls(parts[0], parts[1])


@dataclass
class ModelSpec:
    """What an actor needs to rebuild the model: no Hydra objects, absolute paths."""

    arch: str
    num_classes: int
    in_chans: int
    input_size: int
    checkpoint: str | None
    checkpoint_sha256: str | None = None
    trust_checkpoint: bool = False
    task: str = "multiclass"
    # Spatial input shape when it is not input_size × input_size: the sliding-window ROI
    # (D, H, W) of a 3D segmentation model.
    spatial: tuple[int, ...] | None = None
    # Constructor arguments of non-timm architectures (MONAI UNet channels/strides...).
    net: dict = field(default_factory=dict)
    # Where the model comes from (medray.models.sources): timm | python | torchscript |
    # exported | onnx; ``path`` (+ its sha256) for the file sources, ``target``/``kwargs``
    # for python.
    source: str = "timm"
    path: str | None = None
    path_sha256: str | None = None
    target: str | None = None
    kwargs: dict = field(default_factory=dict)
    # What the model returns: logits (softmax / sigmoid applied) or probs.
    output: str = "logits"
    # model=onnx: the graph output holding the class scores (null = its only output).
    output_name: str | None = None
    # Outputs of the model when not num_classes: 1 = a binary model's positive-class score.
    out_features: int | None = None
    # The class a one-output binary model scores (index into the dataset's classes).
    positive_index: int = 1
    # The resolved preprocessing (medray.data.preprocess.resolve); empty = the medray
    # preset at input_size (the demo models).
    preprocess: dict = field(default_factory=dict)
    # Labels by name (medray.models.labels): the model output each scored dataset class is
    # read from, in the dataset's order (None = output i is class i), and the match itself
    # for the report (outputs, scored, not_scored, unused, renamed).
    output_index: list[int] | None = None
    labels: dict = field(default_factory=dict)
    # softmax | sigmoid when the model's format says (a transformers config's problem_type);
    # None = the task's (softmax for one label per image, sigmoid for several).
    activation: str | None = None
    # torchxrayvision's operating thresholds per output (None where a label has none):
    # op_norm is applied to the backend's logits, so 0.5 is each label's operating point.
    op_threshs: list[float | None] | None = None
    # 3-D models: the recipe that reads a case, runs the windows around the backend and
    # goes back to the original geometry (medray.models.recipes.RECIPES).
    recipe: str | None = None
    # A model of several networks (nnU-Net's folds): per member, the fields that differ
    # from this spec (``name``, ``checkpoint``, ``checkpoint_sha256``...).  Each member is
    # its own backend session and artifact (:meth:`member`); empty = one network.
    members: list[dict] = field(default_factory=list)
    # The metrics the model was published with: ``{metric: {"value", "from"}}`` (model.expected,
    # a bundle's eval_metrics); the report says whether the baseline reproduces them.
    expected: dict = field(default_factory=dict)

    def member(self, i: int) -> ModelSpec:
        """The spec of member ``i``: one network (no members of its own)."""
        from dataclasses import replace

        fields = {k: v for k, v in self.members[i].items() if k != "name"}
        return replace(self, members=[], **fields)

    def member_names(self) -> list[str]:
        return [str(m.get("name", i)) for i, m in enumerate(self.members)]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's input shape without the batch axis: ``(C, *spatial)``, or the
        preprocessing's ``(C, H, W)`` / ``(H, W, C)``."""
        if self.spatial is not None:
            return (self.in_chans, *(int(v) for v in self.spatial))
        if self.preprocess:
            return input_shape(self.preprocess, self.in_chans)
        return (self.in_chans, self.input_size, self.input_size)


@dataclass
class RunSpec:
    """One evaluated configuration (baseline or candidate), as shipped to the actors."""

    name: str
    role: str
    backend: BackendOptions
    precision: str
    device: str
    batch_size: int
    streams: int
    model: ModelSpec
    threads: int = 1
    warmup_batches: int = 2
    artifact: dict | None = None  # {"path", "bytes", "build_s", "cache_hit", "key"}
    options: dict = field(default_factory=dict)
    # Test-time augmentation (medray.data.tta): the Predictor runs every view through
    # the backend and averages probabilities; latency covers all the views.
    tta: str = "none"

    def member(self, i: int) -> RunSpec:
        """The run of model member ``i`` (its own network, artifact and session)."""
        from dataclasses import replace

        arts = (self.artifact or {}).get("members") or [None] * len(self.model.members)
        return replace(self, name=f"{self.name}[{self.model.member_names()[i]}]", model=self.model.member(i),
                       artifact=arts[i])


def input_shape(prep: dict, in_chans: int) -> tuple[int, int, int]:
    """One image's model input without the batch axis: (C, H, W) or (H, W, C)."""
    h, w = prep["size"]
    return (h, w, in_chans) if prep["layout"] == "nhwc" else (in_chans, h, w)
