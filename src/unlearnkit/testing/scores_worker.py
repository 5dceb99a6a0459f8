"""A tiny exact-memorisation estimate, and a command that runs it (the kill-and-resume test of `exact`).

    python -m unlearnkit.testing.scores_worker K FRACTION EPOCHS PAUSE_AFTER

estimates `exact` (k=K, fraction=FRACTION, EPOCHS epochs, serial backend) for the `mlp` on the embedded `digits`
data set into `ModelCache()` (`$UNLEARNKIT_HOME`), and sleeps for a minute once PAUSE_AFTER subset models are
cached (0: never), so that a test can kill it at a known point.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..cache import ModelCache


def exact_context(cache: ModelCache, epochs: int = 2, say: Any = print) -> Any:
    """A ScoreContext for `exact` on digits / mlp (no original model: exact does not read it)."""
    from ..metrics.scores import ScoreContext
    from ..pipelines.classification import TrainRecipe, load_dataset

    data = load_dataset("digits", {})
    return ScoreContext(data=data, dataset="digits", dataset_args={}, model="mlp", model_args={},
                        recipe=TrainRecipe(epochs=epochs, batch_size=64, seed=0), seed=0, cache=cache,
                        original=None, original_key="", record=None, say=say)


def main(argv: list[str]) -> None:
    from .._registry import SCORES
    from ..metrics.scores import compute_score

    k, fraction, epochs, pause_after = int(argv[0]), float(argv[1]), int(argv[2]), int(argv[3])

    def say(line: str) -> None:
        print(line, flush=True)
        # run_jobs reports "[jobs] DONE/TODO KEY done in ...s" once a job's result is cached
        if pause_after and line.startswith(f"[jobs] {pause_after}/") and " done in " in line:
            time.sleep(60)

    score = SCORES.create("exact", k=k, fraction=fraction, backend="serial")
    compute_score(score, exact_context(ModelCache(), epochs, say))


if __name__ == "__main__":
    from unlearnkit.testing.scores_worker import main as _main

    _main(sys.argv[1:])
