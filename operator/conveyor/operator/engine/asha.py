"""ASHA's decision at a rung: whether a trial goes on, by a rule that depends on what going on costs.

Asynchronous successive halving judges a trial each time it reaches a rung (the first rung times
powers of 3): it goes on to the next rung or stops. Two rules are in use. Optuna's
`SuccessiveHalvingPruner` (the ASHA paper's) lets it go on only in the top third, rounded down but at
least the best, of every value recorded at that rung, its own included: with 4 or 5 values only the
best. Ray Tune's `ASHAScheduler` lets it go on at or above the 2/3 quantile (linearly interpolated)
of the values recorded there before it (`below_ray_cutoff`): about two of five. The first trial to
reach a rung goes on under both.

Conveyor uses Ray's rule at every rung but the last and the top third at the last (`Asha`). Going on
from an early rung costs two rungs' worth (from epoch 1 to 3, from 3 to 9); going on from the last
costs the rest of training (from 9 to 27 of 27 epochs), two thirds of a trial's budget. Measured on
issue 13's synthetic task (27 trials x 27 epochs, 32 seeds, benchmarks/RESULTS.md): with Optuna's rule
at every rung, the final model trailed Ray Tune's search by 28 +- 11 test samples of 3,000; with Ray's
rule at every rung, by 9 +- 8, spending 40% of random search's trial-epochs; with this one, by 18 +- 10
over 42 seeds (8 +- 12 over the first 32), spending 37%, as much as Ray Tune. On digits (9 trials x
9 epochs, two rungs) the accuracy is saturated: the same as Optuna's rule and random search, for 44%
of random's trial-epochs instead of Optuna's rule's 38%.

No rung in the last part of training: Optuna's rungs have no upper bound, so with 30 epochs, warm-up
3 and factor 3 a trial could be stopped after epoch 27 (saving 3 epochs of 30), and with warm-up 10
at epoch 30 itself, a finished trial thrown away. A rung must leave a trial that goes on room to
train: none after `last_rung` (the engine passes a third of training). The bound is on the rung, not
on the report that reaches it: a user loop reports on its own grid, so the rung at step 300 is
judged at the first report past it (step 360, say), which is still that rung's decision; a report
past several rungs is judged at each, as Optuna does.

A rung's values are kept where Optuna's successive halving keeps them (`RUNG_KEY_PREFIX` + the rung's
index, a trial's system attributes), so a study rebuilt from status finds them, and a trial whose
value is not a number (a diverged loss) stops at its rung.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import FrozenTrial

REDUCTION_FACTOR = 3
RUNG_KEY_PREFIX = "completed_rung_"  # as Optuna's successive halving: a trial's value at each rung reached


class Asha(optuna.pruners.BasePruner):
    """Rungs at `first_rung` x 3^k up to `last_rung`: Ray Tune's rule before the last, the top third at
    the last."""

    def __init__(self, first_rung: int, last_rung: int) -> None:
        self.first_rung = first_rung
        self.last_rung = last_rung

    def rungs(self) -> list[int]:
        rungs = [self.first_rung]
        while rungs[-1] * REDUCTION_FACTOR <= self.last_rung:
            rungs.append(rungs[-1] * REDUCTION_FACTOR)
        return rungs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        rungs = self.rungs()
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        raw = trial.intermediate_values[step]
        reached = sum(1 for key in trial.system_attrs if key.startswith(RUNG_KEY_PREFIX))
        for index in range(reached, len(rungs)):
            if step < rungs[index]:
                return False
            if math.isnan(raw):
                return True
            key = f"{RUNG_KEY_PREFIX}{index}"
            recorded = [
                sign * t.system_attrs[key]
                for t in study.get_trials(deepcopy=False)
                if t.number != trial.number and key in t.system_attrs
            ]
            study._storage.set_trial_system_attr(trial._trial_id, key, raw)
            if self.stops(sign * raw, recorded, last=index == len(rungs) - 1):
                return True
        return False

    def stops(self, value: float, recorded: list[float], last: bool) -> bool:
        """The decision at a rung (higher is better): the top third at the last, Ray's cutoff before."""
        return below_top_third(value, recorded) if last else below_ray_cutoff(value, recorded)


def below_ray_cutoff(value: float, recorded: list[float]) -> bool:
    """Ray Tune's `ASHAScheduler` decision (higher is better): stop below the 2/3 quantile, linearly
    interpolated, of the values recorded at the rung before this one; the first to arrive goes on."""
    if not recorded:
        return False
    return value < float(np.percentile(recorded, (1 - 1 / REDUCTION_FACTOR) * 100))


def below_top_third(value: float, recorded: list[float]) -> bool:
    """Optuna's `SuccessiveHalvingPruner` decision (higher is better): go on only in the top third,
    rounded down but at least the best, of the values recorded at the rung, this one included."""
    competing = sorted([*recorded, value])
    return value < competing[-max(1, len(competing) // REDUCTION_FACTOR)]
