"""asrflow: the pipeline steps. A sub-package per step, each with ``core.py`` (the logic)
and ``component.py`` (a thin KFP wrapper)."""

__version__ = "0.1.0"
