"""Evaluate one serving configuration against the baseline.

    python jobs/evaluate.py backend=onnxruntime precision=fp32 data.limit=500 batch_size=32 streams=2
"""

import hydra
from omegaconf import DictConfig

from medray.cli import continue_command, main_wrapper, register_configs
from medray.config import EvalConfig

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from medray.pipeline.evaluate import run

    # Ctrl-C: the finished samples are in output_dir's resume parts; say how to go on.
    main_wrapper(cfg, EvalConfig, run, on_interrupt=continue_command("jobs/evaluate.py", "resume=true"))


if __name__ == "__main__":
    main()
