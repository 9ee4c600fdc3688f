"""MONAI bundles as they ship (``model=bundle model.path=<bundle folder>``).

A bundle (the MONAI model zoo's format) is ``configs/inference.json`` (+ ``metadata.json``),
``models/model.pt`` and often ``models/model.ts``.  medray parses it with the bundle's own
``monai.bundle.ConfigParser`` (its ``imports``, ``@`` references and ``$`` expressions) and
takes, from the objects the bundle's runner would use:

* the network (``evaluator#network``) with the weights its ``CheckpointLoader`` loads, or
  ``models/model.ts`` (``model.weights=ts``) — the backends' PyTorch model (:mod:`.network`);
* the preprocessing (``dataset#transform``), run verbatim in the read tasks;
* the inferer (``evaluator#inferer``): a sliding window whose settings are medray's defaults;
* the postprocessing (``evaluator#postprocessing``: activations, ``Invertd``, argmax...)
  with the backend's session in place of the network (:mod:`.recipe`);
* ``amp``, the class names and ``eval_metrics`` of ``metadata.json`` (:mod:`.resolve`).

**Loading a bundle runs its code** (``$`` expressions are Python, ``_target_`` imports any
module), exactly like unpickling a checkpoint: medray refuses it unless
``model.trust_checkpoint=true``, the setting that allows pickled checkpoints.  Weights named in
``large_files.yml`` are checked against its hashes; nothing is ever downloaded.
"""

from __future__ import annotations

TRUST_HINT = ("loading a MONAI bundle runs its code (its $ expressions and _target_ imports), like unpickling a "
              "checkpoint; set model.trust_checkpoint=true if you trust the bundle's origin")
