"""Train the demo model of a dataset (medray trains it on first use anyway).

    python jobs/train.py                              # binary synthetic demo
    python jobs/train.py data=synthetic_multilabel    # 14-label demo
    python jobs/train.py retrain=true model.train.epochs=12
"""

import hydra
from omegaconf import DictConfig

from medray.cli import main_wrapper, register_configs
from medray.config import TrainJobConfig

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from medray.pipeline.prepare import train

    main_wrapper(cfg, TrainJobConfig, train)


if __name__ == "__main__":
    main()
