"""ASHA's decisions on crafted curves: Ray Tune's rule before the last rung, Optuna's top third at it
(checked against Optuna's own pruner), no rung after the last, either direction, reports past rungs."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from conveyor.operator.engine.asha import Asha, below_ray_cutoff, below_top_third


def stopped_at(
    pruner: optuna.pruners.BasePruner, curves: list[list[float]], maximize: bool = True
) -> list[int | None]:
    """Each curve run as a trial in turn (one report per epoch): the epoch it was stopped at, or None."""
    study = optuna.create_study(direction="maximize" if maximize else "minimize", pruner=pruner)
    stops: list[int | None] = []
    for curve in curves:
        trial = study.ask()
        stop = None
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            if trial.should_prune():
                stop = epoch
                break
        stops.append(stop)
        if stop is None:
            study.tell(trial, curve[-1])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return stops


@pytest.mark.parametrize("seed", range(20))
def test_the_last_rung_decides_as_optunas_successive_halving(seed: int) -> None:
    """With one rung (epoch 1; two epochs, so Optuna's next rung at 3 is never reached), `Asha` keeps
    exactly the trials Optuna's `SuccessiveHalvingPruner` keeps."""
    rng = random.Random(seed)
    curves = [[rng.random(), rng.random()] for _ in range(12)]
    optunas = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    assert stopped_at(Asha(1, 1), curves) == stopped_at(optunas, curves)
    assert stopped_at(Asha(1, 1), curves, maximize=False) == stopped_at(optunas, curves, maximize=False)


def test_earlier_rungs_keep_what_rays_quantile_keeps_and_the_last_rung_does_not() -> None:
    history = [[0.5] * 9, [0.6] * 9, [0.7] * 9]  # rung values 0.5, 0.6, 0.7: Ray's cutoff 0.6333
    # Rungs 1, 3 (the last of 1..3): at epoch 1, 0.64 clears Ray's cutoff; the top third of
    # [0.5, 0.6, 0.64, 0.7] is only 0.7, so at the last rung it stops.
    assert stopped_at(Asha(1, 3), [*history, [0.64] * 9])[-1] == 3
    assert stopped_at(Asha(1, 3), [*history, [0.62] * 9])[-1] == 1  # below the cutoff at the first
    assert stopped_at(Asha(1, 3), [*history, [0.71] * 9])[-1] is None  # the best at both rungs
    assert stopped_at(Asha(1, 1), [*history, [0.64] * 9])[-1] == 1  # one rung: it is the last


def test_the_first_to_reach_a_rung_goes_on_and_none_is_judged_after_the_last() -> None:
    assert stopped_at(Asha(1, 9), [[0.1] * 27]) == [None]
    # Rungs 1, 3, 9: a collapse after epoch 9 is not judged, however bad.
    curves = [[0.9] * 27, [0.9] * 9 + [0.0] * 18]
    assert stopped_at(Asha(1, 9), curves) == [None, None]
    assert Asha(1, 9).rungs() == [1, 3, 9] and Asha(33, 300).rungs() == [33, 99, 297]


def test_minimisation_keeps_the_low_values() -> None:
    history = [[0.5] * 3, [0.6] * 3, [0.7] * 3]  # a loss: Ray's cutoff is the 1/3 quantile, 0.5667
    assert stopped_at(Asha(1, 3), [*history, [0.55] * 3], maximize=False)[-1] == 3
    assert stopped_at(Asha(1, 3), [*history, [0.58] * 3], maximize=False)[-1] == 1


def test_a_value_that_is_not_a_number_stops_at_its_rung_and_is_not_recorded() -> None:
    study = optuna.create_study(direction="maximize", pruner=Asha(1, 9))
    trial = study.ask()
    trial.report(math.nan, 1)
    assert trial.should_prune()
    assert not any(key.startswith("completed_rung_") for key in study.trials[0].system_attrs)


def test_a_report_past_several_rungs_is_judged_at_each() -> None:
    """A user loop reporting every 10 steps meets rungs 1, 3 and 9 at its first report."""
    study = optuna.create_study(direction="maximize", pruner=Asha(1, 9))
    leader = study.ask()
    leader.report(0.9, 10)
    assert not leader.should_prune()
    attrs = study.trials[0].system_attrs
    assert [attrs[f"completed_rung_{i}"] for i in range(3)] == [0.9, 0.9, 0.9]
    follower = study.ask()
    follower.report(0.8, 10)
    assert follower.should_prune()  # below the leader at rung 1 already


@pytest.mark.parametrize(
    ("value", "recorded", "below"),
    [
        (0.1, [], False),
        (0.5, [0.5], False),
        (0.49, [0.5], True),
        (0.6, [0.5, 0.6, 0.7], True),
        (0.64, [0.5, 0.6, 0.7], False),
    ],
)
def test_rays_cutoff(value: float, recorded: list[float], below: bool) -> None:
    assert below_ray_cutoff(value, recorded) is below


@pytest.mark.parametrize(
    ("value", "recorded", "below"),
    [
        (0.1, [], False),
        (0.6, [0.5, 0.7, 0.55, 0.65], True),  # 5 values: only the best goes on
        (0.66, [0.5, 0.7, 0.55, 0.65, 0.4], False),  # 6 values: the top two
    ],
)
def test_top_third(value: float, recorded: list[float], below: bool) -> None:
    assert below_top_third(value, recorded) is below
