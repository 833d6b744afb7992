"""The error of the training step. Standard library only: the settings raise it too."""


class TrainError(RuntimeError):
    """A training run that cannot start or go on; the message says why."""
