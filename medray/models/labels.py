"""A model's outputs matched to a dataset's classes by name.

Names come from the model (``model.classes``, or what its format carries: transformers'
``id2label``, timm's ``label_names``, torchxrayvision's pathologies, a medray checkpoint's
classes) and from the dataset (``table.classes``).  They match after case-folding and
dropping separators (``Pleural_Thickening`` = ``pleural thickening`` = ``Pleural-Thickening``),
then through ``model.class_map`` (model name → dataset class, explicit) and a few groups of
true synonyms (:data:`SYNONYMS`).  The result selects and reorders the model's outputs into
the dataset's class order and lists the classes the model has no output for (not scored,
never a zero); no class in common, or a name matching twice, is a config error naming both
lists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models")

# One finding under the names NIH ChestX-ray14, CheXpert, MIMIC-CXR, PadChest and
# torchxrayvision give it. Only true synonyms: a broader finding (Lung Lesion vs Nodule) is not one.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("Effusion", "Pleural Effusion"),
    ("Lung Opacity", "Airspace Opacity"),
    ("Infiltration", "Infiltrate", "Infiltrates"),
    ("Enlarged Cardiomediastinum", "Widened Mediastinum"),
)


def norm(name: str) -> str:
    """``'Pleural_Thickening'`` → ``'pleuralthickening'``: case and separators (space _ - . /) dropped."""
    return re.sub(r"[\s_\-./]+", "", str(name)).casefold()


@dataclass(frozen=True)
class LabelMatch:
    """Which model output scores which dataset class."""

    index: tuple[int, ...]  # model output index of each scored class, in dataset order
    scored: tuple[str, ...]  # the dataset classes scored (dataset order)
    not_scored: tuple[str, ...]  # dataset classes the model has no output for
    unused: tuple[str, ...]  # model outputs no dataset class asked for
    renamed: tuple[tuple[str, str], ...]  # (model name, dataset class) where the names differ

    def describe(self) -> str:
        """One line for the log."""
        out = [f"scored {len(self.scored)} class(es) by name: {', '.join(self.scored)}"]
        if self.renamed:
            out.append("matched " + ", ".join(f"{a} -> {b}" for a, b in self.renamed))
        if self.not_scored:
            out.append(f"NOT scored (the model has no output for them): {', '.join(self.not_scored)}")
        if self.unused:
            out.append(f"model outputs not used: {', '.join(self.unused)}")
        return "; ".join(out)

    def as_dict(self, outputs: Sequence[str]) -> dict:
        """The report's ``model.labels`` entry."""
        return {"outputs": list(outputs), "index": list(self.index), "scored": list(self.scored),
                "not_scored": list(self.not_scored), "unused": list(self.unused),
                "renamed": {a: b for a, b in self.renamed}}


def _synonym_groups(synonyms: Iterable[Sequence[str]]) -> dict[str, int]:
    groups: dict[str, int] = {}
    for gid, group in enumerate(synonyms):
        for name in group:
            groups.setdefault(norm(name), gid)
    return groups


def _outputs_by_name(labels: list[str], both: str) -> dict[str, int]:
    by_key: dict[str, int] = {}
    for i, name in enumerate(labels):
        if not str(name).strip():  # an output with no name (xrv's untrained slots)
            continue
        k = norm(name)
        if k in by_key:
            raise ConfigError(f"the model names two outputs {labels[by_key[k]]!r} and {name!r} alike; {both}")
        by_key[k] = i
    return by_key


def match_labels(labels: Sequence[str], classes: Sequence[str], class_map: dict[str, str] | None = None,
                 synonyms: Iterable[Sequence[str]] = SYNONYMS) -> LabelMatch:
    """Match ``labels`` (output i's name; ``''`` = an output with no name) to ``classes``:
    ``class_map`` first (model name → dataset class), then equal normalised names, then synonyms."""
    labels, classes = [str(x) for x in labels], [str(c) for c in classes]
    both = f"model outputs {labels}; dataset classes {classes}"
    by_key = _outputs_by_name(labels, both)
    seen: dict[str, str] = {}
    for c in classes:
        if norm(c) in seen:
            raise ConfigError(f"dataset classes {seen[norm(c)]!r} and {c!r} are the same name; {both}")
        seen[norm(c)] = c
    chosen: dict[str, int] = {}
    for src, dst in (class_map or {}).items():
        if norm(src) not in by_key or norm(dst) not in seen:
            raise ConfigError(f"model.class_map: {src!r} -> {dst!r} names {'no model output' if norm(src) not in by_key else 'no dataset class'}; {both}")
        chosen[seen[norm(dst)]] = by_key[norm(src)]
    taken = set(chosen.values())
    for c in classes:
        if c not in chosen and norm(c) in by_key and by_key[norm(c)] not in taken:
            chosen[c] = by_key[norm(c)]
            taken.add(chosen[c])
    groups = _synonym_groups(synonyms)
    for c in classes:
        if c in chosen or norm(c) not in groups:
            continue
        hits = [i for k, i in by_key.items() if groups.get(k) == groups[norm(c)] and i not in taken]
        if len(hits) > 1:
            raise ConfigError(f"dataset class {c!r} matches several model outputs {[labels[i] for i in hits]} "
                              f"through synonyms; say which with model.class_map; {both}")
        if hits:
            chosen[c] = hits[0]
            taken.add(hits[0])
    if not chosen:
        raise ConfigError(f"no dataset class is among the model's outputs (by name: case and separators ignored, "
                          f"synonyms such as Effusion = Pleural Effusion); {both}. Map them with "
                          "model.class_map='{<model output>: <dataset class>}', or name the outputs with model.classes")
    scored = [c for c in classes if c in chosen]
    return LabelMatch(
        index=tuple(chosen[c] for c in scored),
        scored=tuple(scored),
        not_scored=tuple(c for c in classes if c not in chosen),
        unused=tuple(n for i, n in enumerate(labels) if str(n).strip() and i not in taken),
        renamed=tuple((labels[chosen[c]], c) for c in scored if labels[chosen[c]] != c),
    )


def apply_labels(spec: ModelSpec, names: list[str], table: SampleTable, class_map: dict[str, str], where: str) -> None:
    """Read the model's outputs as the dataset's classes by name: sets ``spec.output_index``
    (the outputs, in the dataset's order), ``spec.labels`` (the match, for the report) and
    ``spec.num_classes`` (the classes scored).  A single-label dataset needs every class
    scored, or, with two classes, its positive one (the other is 1 - p)."""
    k = spec.out_features or spec.num_classes
    if len(names) != k:
        raise ConfigError(f"{where}: {len(names)} output names {names[:8]} for a model with {k} outputs; "
                          "give one name per output (model.classes)")
    try:
        match = match_labels(names, table.classes, class_map)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    classes = list(table.classes)
    one_score = len(classes) == 2 and match.scored == (classes[table.positive_index()],)
    if table.task != "multilabel" and match.not_scored and not one_score:
        raise ConfigError(
            f"{where}: dataset {table.name} has one class per image, so every class needs a model output; none is "
            f"named {list(match.not_scored)} (model.class_map='{{<output>: <class>}}' maps a synonym); "
            f"model outputs {names}; dataset classes {classes}")
    spec.labels = match.as_dict(names)
    if one_score:  # the other class is scored as 1 - p(positive)
        spec.labels.update(not_scored=[], one_score=classes[table.positive_index()])
    identity = match.index == tuple(range(k))
    spec.output_index = None if identity else list(match.index)
    spec.num_classes = len(classes) - len(spec.labels["not_scored"])
    log.info("%s: %s", where, match.describe() if not one_score else
             f"one score: {classes[table.positive_index()]} is output {match.index[0]} ({names[match.index[0]]})")
