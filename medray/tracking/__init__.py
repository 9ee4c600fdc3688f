"""The tracking axis: evaluations and sweeps recorded in an experiment tracker
(``tracking=mlflow``: :mod:`medray.tracking.mlflow`; options in :mod:`.config`)."""
