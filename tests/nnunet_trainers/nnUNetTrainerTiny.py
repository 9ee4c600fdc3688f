"""Tiny nnU-Net trainer for the test fixtures (120 iterations, ~20 s CPU per fold on the tiny plans).

In its own folder because nnU-Net imports *every* module of the folder named by the
``nnUNet_extTrainer`` env var when it looks a trainer up by name, in training, in
``nnUNetPredictor.initialize_from_trained_model_folder`` and in medray's model loading."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

CPU = torch.device("cpu")


class nnUNetTrainerTiny(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = CPU):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 6
        self.num_iterations_per_epoch = 20
        self.num_val_iterations_per_epoch = 2
        self.initial_lr = 3e-2
        self.save_every = 10 ** 6

    def plot_network_architecture(self):  # needs hiddenlayer/graphviz; useless here
        pass

    def on_epoch_end(self):
        # skip the matplotlib progress.png (~1 s per epoch)
        self.logger.plot_progress_png = lambda *a, **k: None
        super().on_epoch_end()
