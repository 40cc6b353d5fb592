"""The paper's comparison as one command: base vs local-only vs centralized vs FedIT, evaluated
with held-out loss, ROUGE-L, exact match and an optional LLM judge, written up as a report.

Names are imported lazily so that building the ``fedit`` parser does not import torch.
"""

from typing import Any

__all__ = ["Experiment", "ExperimentSettings", "JudgeSettings", "run_experiment"]


def __getattr__(name: str) -> Any:
    if name in ("Experiment", "run_experiment"):
        from fedit.experiment import runner
        return getattr(runner, name)
    if name in ("ExperimentSettings", "JudgeSettings"):
        from fedit.experiment import settings
        return getattr(settings, name)
    raise AttributeError(name)
