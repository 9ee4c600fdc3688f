"""Sweep serving configurations with Ray Tune and recommend one.

    python jobs/sweep.py sweep=cpu                      # CPU grid on the synthetic set
    python jobs/sweep.py sweep=gpu constraints.max_auc_drop=0.002
    python jobs/sweep.py sweep.resume=true output_dir=outputs/sweep-...   # finish an interrupted sweep
"""

import sys

import hydra
from omegaconf import DictConfig

from medray.cli import main_wrapper, register_configs
from medray.tune.config import SweepJobConfig

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from medray.tune.runner import run

    # The group options chosen here (data=..., model=...) go into the reproduce command.
    choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None and "/" not in k}
    doc = main_wrapper(cfg, SweepJobConfig, lambda c: run(c, choices=choices))
    if doc and doc.get("status") == "interrupted":  # Ctrl-C: scripts must not take it as done
        print(f"medray: sweep interrupted; finish it with: python jobs/sweep.py <same overrides> sweep.resume=true "
              f"output_dir={doc['output_dir']}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
