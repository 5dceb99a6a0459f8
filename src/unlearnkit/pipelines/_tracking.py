"""Optional experiment tracking for a pipeline, through accelerate's trackers (TensorBoard, MLflow, trackio, W&B, ...):
a `tracking:` config section, checked while validating (an uninstalled tracker is an early error, not a silent skip),
and a `Tracker` that logs a run's values at a step. Off by default (`logger: none`); imported lazily."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, param


@dataclass
class Tracking:
    """Optional experiment tracking through accelerate's trackers (off by default)."""

    logger: str = param("none", help="none, or an accelerate tracker: tensorboard, mlflow, trackio, wandb, aim, "
                                     "comet_ml, clearml, dvclive, swanlab (its package must be installed)")
    project_dir: str | None = param(None, help="where local trackers write (None: <output_dir>/tracking)")
    project_name: str = param("unlearnkit", help="the tracker's project / experiment name")


def check_tracking(tracking: Tracking) -> None:
    """`none` or an accelerate tracker whose package is installed (accelerate would otherwise skip it silently)."""
    if tracking.logger == "none":
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    if tracking.logger not in LOGGER_TYPE_TO_CLASS:
        raise ConfigError(f"tracking.logger='{tracking.logger}' is not an accelerate tracker; allowed: none, "
                          f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    builtin = {str(t) for t in LoggerType}
    available = {str(t) for t in get_available_trackers()}
    if tracking.logger in builtin and tracking.logger not in available:
        raise ConfigError(f"tracking.logger='{tracking.logger}': its package is not installed (pip install "
                          f"{tracking.logger}); installed trackers: {', '.join(sorted(available)) or 'none'}")


class Tracker:
    """accelerate's trackers (`Accelerator(log_with=..., project_dir=...)`), or nothing for logger=none."""

    def __init__(self, tracking: Tracking, out_dir: Path, config: dict[str, Any]) -> None:
        self.accelerator = None
        if tracking.logger == "none":
            return
        from accelerate import Accelerator

        project_dir = tracking.project_dir or str(out_dir / "tracking")
        self.accelerator = Accelerator(log_with=tracking.logger, project_dir=project_dir)
        self.accelerator.init_trackers(tracking.project_name, config=_flat(config))

    def log(self, values: dict[str, float], step: int) -> None:
        if self.accelerator is not None:
            self.accelerator.log({k: v for k, v in values.items() if v is not None}, step=step)

    def end(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": scalar}: trackers store only str / int / float / bool hyperparameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str | int | float | bool) else json.dumps(value)
    return out
