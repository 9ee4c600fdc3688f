"""Train the demo model of a dataset (medray trains it on first use anyway).

    python jobs/train.py                              # binary synthetic demo
    python jobs/train.py data=synthetic_multilabel    # 14-label demo
    python jobs/train.py retrain=true model.train.epochs=12
"""

import hydra
from omegaconf import DictConfig

from medray.cli import main_wrapper
from medray.config import TrainJobConfig, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from medray.models.resolve import train_job

    main_wrapper(cfg, TrainJobConfig, train_job)


if __name__ == "__main__":
    main()
