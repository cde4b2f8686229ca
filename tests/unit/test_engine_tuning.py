"""The Optuna study rebuilt from status: valid and reproducible asks for every algorithm, grid
coverage, and pruning decisions on crafted per-epoch values, and per-step values of user loops."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conveyor.operator.api.spec import TuningSpec
from conveyor.operator.api.status import TrialStatus
from conveyor.operator.engine.asha import Asha
from conveyor.operator.engine.tuning import (
    Resource,
    Study,
    distributions,
    grid_points,
    make_pruner,
    max_epochs,
    planned_trials,
    resource,
    verdict_epochs,
    warmup_epochs,
    warmup_steps,
)
from tests.helpers.specs import make_spec, small_tuning

MIXED = [
    {"name": "optimizer.learningRate", "type": "float", "min": 1e-4, "max": 1e-1, "log": True},
    {"name": "model.layers", "type": "int", "min": 1, "max": 4},
    {"name": "model.dropout", "type": "float", "min": 0.0, "max": 0.5, "step": 0.1},
    {"name": "training.batchSize", "type": "categorical", "values": [32, 64, 128]},
    {"name": "optimizer.name", "type": "categorical", "values": ["adam", "adamw", "sgd"]},
]


def tuning(**changes: Any) -> TuningSpec:
    fields: dict[str, Any] = {"algorithm": "tpe", "trials": 12, "parallelism": 1, "parameters": MIXED}
    fields.update(changes)
    return TuningSpec.model_validate(fields)


def run_study(spec: TuningSpec, score: Any = None) -> list[TrialStatus]:
    """Ask every trial one at a time, finishing each before the next, from a fresh rebuild each time."""
    trials: list[TrialStatus] = []
    for number in range(planned_trials(spec)):
        params, attrs, _ = Study(spec, trials, maximize=True, max_epochs=10).ask(number)
        value = score(params) if score else 0.5 + 0.01 * number
        trials.append(
            TrialStatus(
                name=f"trial-{number:04d}",
                number=number,
                params=params,
                attrs=attrs or None,
                state="Succeeded",
                values=[value],
                value=value,
            )
        )
    return trials


@pytest.mark.parametrize("algorithm", ["random", "tpe", "cmaes"])
def test_every_algorithm_asks_valid_parameters(algorithm: str) -> None:
    if algorithm == "cmaes":
        pytest.importorskip("cmaes")
    spec = tuning(algorithm=algorithm)
    space = distributions(spec)
    trials = run_study(spec, score=lambda p: -abs(p["optimizer.learningRate"] - 0.003))
    assert len(trials) == 12
    for trial in trials:
        assert set(trial.params) == set(space)
        for name, value in trial.params.items():
            assert space[name]._contains(space[name].to_internal_repr(value)), (name, value)
        assert isinstance(trial.params["model.layers"], int)
        assert round(trial.params["model.dropout"] * 10, 6) == round(trial.params["model.dropout"] * 10)


def test_grid_visits_each_point_once_and_caps_trials() -> None:
    categorical = [p for p in MIXED if p["type"] == "categorical"]
    spec = tuning(algorithm="grid", trials=50, parameters=categorical)
    assert planned_trials(spec) == 9
    trials = run_study(spec)
    seen = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(seen)) == 9
    assert set(seen) == {tuple(sorted(p.items())) for p in grid_points(spec)}


def test_grid_runs_fewer_trials_than_points_when_asked() -> None:
    categorical = [p for p in MIXED if p["type"] == "categorical"]
    spec = tuning(algorithm="grid", trials=4, parameters=categorical)
    trials = run_study(spec)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


@pytest.mark.parametrize("algorithm", ["random", "tpe", "grid", "cmaes"])
def test_asking_again_from_the_same_status_gives_the_same_parameters(algorithm: str) -> None:
    if algorithm == "cmaes":
        pytest.importorskip("cmaes")
    params = MIXED if algorithm != "grid" else [p for p in MIXED if p["type"] == "categorical"]
    spec = tuning(algorithm=algorithm, parameters=params, trials=9)
    trials = run_study(spec)[:7]
    first = Study(spec, trials, maximize=True, max_epochs=10).ask(7)
    second = Study(spec, trials, maximize=True, max_epochs=10).ask(7)
    assert first[0] == second[0]


def test_seed_changes_the_trials() -> None:
    a = run_study(tuning(algorithm="random", seed=1, trials=3))
    b = run_study(tuning(algorithm="random", seed=2, trials=3))
    assert [t.params for t in a] != [t.params for t in b]


def test_neighbouring_seeds_share_no_trials() -> None:
    a = run_study(tuning(algorithm="random", seed=1, trials=4))
    b = run_study(tuning(algorithm="random", seed=2, trials=4))
    assert not {str(t.params) for t in a} & {str(t.params) for t in b}


def test_tpe_concentrates_on_good_regions() -> None:
    spec = tuning(algorithm="tpe", trials=30, parameters=[MIXED[0]])
    trials = run_study(spec, score=lambda p: -abs(p["optimizer.learningRate"] - 0.003) * 100)
    late = [t.params["optimizer.learningRate"] for t in trials[-10:]]
    assert sum(0.0005 < lr < 0.02 for lr in late) >= 7


def trial_at(number: int, lr: float, state: str, values: list[float]) -> TrialStatus:
    value = max(values) if state == "Succeeded" else None
    return TrialStatus(
        name=f"trial-{number:04d}",
        number=number,
        params={"optimizer.learningRate": lr},
        state=state,
        values=values,
        value=value,
    )


# Under ASHA a small, fast model reached every rung first and completed at chance, while a trial
# stopped at the first rung had six times its accuracy.
ASHA_STUDY = [
    trial_at(0, 2e-4, "Succeeded", [0.10] * 9),
    trial_at(1, 3e-2, "Pruned", [0.60]),
    trial_at(2, 1e-3, "Pruned", [0.12]),
    trial_at(3, 5e-3, "Pruned", [0.15]),
]


def test_tpe_learns_from_pruned_trials_by_their_values() -> None:
    proposals = []
    for seed in range(10):
        spec = tuning(algorithm="tpe", pruner="asha", parameters=ONE, trials=9, seed=seed)
        study = Study(spec, ASHA_STUDY, maximize=True, max_epochs=9)
        params, _, _ = study.ask(4)
        assert Study(spec, ASHA_STUDY, maximize=True, max_epochs=9).ask(4)[0] == params  # reproducible
        proposals.append(params["optimizer.learningRate"])
    # Near the pruned trial that did best, not the completed one that did worst.
    assert sum(lr > 1e-2 for lr in proposals) >= 8, proposals


# Under ASHA the promoted trials are the good ones, and they run longest: still running, trial 3 had
# passed two rungs far ahead of every finished trial (as the constant liar's worst, TPE asked near trial
# 0 instead: 8 times of 10).
PROMOTED_STILL_RUNNING = [
    trial_at(0, 1e-4, "Succeeded", [0.30] * 9),
    trial_at(1, 1e-3, "Pruned", [0.12]),
    trial_at(2, 3e-3, "Pruned", [0.10]),
    trial_at(3, 3e-2, "Running", [0.60, 0.70, 0.75]),
    trial_at(4, 5e-4, "Running", []),
]


def test_tpe_learns_from_running_trials_by_their_reports() -> None:
    proposals = []
    for seed in range(10):
        spec = tuning(algorithm="tpe", pruner="asha", parameters=ONE, trials=9, seed=seed)
        study = Study(spec, PROMOTED_STILL_RUNNING, maximize=True, max_epochs=9)
        proposals.append(study.ask(5)[0]["optimizer.learningRate"])
        assert study._asking is not None
        told = [t.state for t in study._asking.get_trials(deepcopy=False)]
        # Reported: ranked by its best report; not reported yet: the constant liar's worst, as before.
        assert told[3:] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING], told
    # Near the running trial that leads, not the constant liar's worst.
    assert sum(lr > 1e-2 for lr in proposals) >= 8, proposals


def test_the_pruner_still_sees_pruned_trials_as_pruned() -> None:
    spec = tuning(algorithm="tpe", pruner="median", parameters=ONE, trials=9)
    study = Study(spec, ASHA_STUDY, maximize=True, max_epochs=9)
    study.ask(4)
    states = [t.state for t in study.study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, *[TrialState.PRUNED] * 3, TrialState.RUNNING]
    # The median pruner waits for 2 completed trials: pruned ones do not count, completed ones do.
    slow = trial_at(4, 3e-2, "Running", [0.01])
    assert Study(spec, [*ASHA_STUDY, slow], True, max_epochs=9).check_pruning(slow) is None
    completed = [
        trial_at(t.number, 0.01, "Succeeded", [v for v in t.values if v is not None]) for t in ASHA_STUDY
    ]
    slow = trial_at(4, 3e-2, "Running", [0.01])  # afresh: check_pruning records the reports it checked
    assert Study(spec, [*completed, slow], True, max_epochs=9).check_pruning(slow) == 1


# --- pruning ---------------------------------------------------------------------------------------


def finished(number: int, values: list[float], state: str = "Succeeded") -> TrialStatus:
    return TrialStatus(
        name=f"trial-{number:04d}",
        number=number,
        params={"optimizer.learningRate": 0.01},
        state=state,
        values=values,
        value=max(values),
    )  # type: ignore[arg-type]


def running(number: int, values: list[float]) -> TrialStatus:
    return TrialStatus(
        name=f"trial-{number:04d}",
        number=number,
        params={"optimizer.learningRate": 0.01},
        state="Running",
        values=values,
    )


def prune_at(
    spec: TuningSpec, history: list[TrialStatus], trial: TrialStatus, maximize: bool = True
) -> int | None:
    """Replay the history through the pruner first (so ASHA/Hyperband record their rungs), then ask."""
    replayed: list[TrialStatus] = []
    for past in history:
        live = past.model_copy(update={"state": "Running", "value": None})
        Study(spec, [*replayed, live], maximize, max_epochs=9).check_pruning(live)
        replayed.append(past.model_copy(update={"attrs": live.attrs}))
    return Study(spec, [*replayed, trial], maximize, max_epochs=9).check_pruning(trial)


ONE = [{"name": "optimizer.learningRate", "type": "float", "min": 1e-4, "max": 1e-1, "log": True}]
GOOD = [0.80, 0.85, 0.90, 0.92, 0.93, 0.94, 0.95, 0.95, 0.96]


@pytest.mark.parametrize(
    ("pruner", "warmup", "candidate", "expected"),
    [
        ("none", 1, [0.1, 0.1, 0.1], None),
        ("median", 1, [0.1, 0.1, 0.1], 1),
        ("median", 3, [0.1, 0.1, 0.1], 3),
        ("median", 1, [0.9, 0.95, 0.97], None),
        ("asha", 1, [0.1, 0.1, 0.1], 1),
        ("asha", 1, [0.9, 0.95, 0.97, 0.98], None),
        ("asha", 2, [0.1, 0.1, 0.1], 2),
        # Optuna's next rung would be epoch 9 of 9: pruning there throws a finished trial away.
        ("asha", 3, [*GOOD[:8], 0.1], None),
        ("hyperband", 1, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 1),
        ("hyperband", 1, [0.99] * 9, None),
    ],
)
def test_pruning_decisions(pruner: str, warmup: int, candidate: list[float], expected: int | None) -> None:
    spec = tuning(pruner=pruner, warmup_epochs=warmup, parameters=ONE, trials=20)
    # Enough history that each Hyperband bracket holds finished trials to compete with.
    history = [finished(n, [v - 0.001 * n for v in GOOD]) for n in range(18)]
    trial = running(18, candidate)
    pruned = prune_at(spec, history, trial)
    if pruner == "hyperband" and expected is not None:
        assert pruned is not None  # the bracket decides the rung; it is pruned at one of them
    else:
        assert pruned == expected
    assert trial.attrs is not None and trial.attrs["conveyor:checked"] == (pruned or len(candidate))


def test_pruning_respects_minimisation() -> None:
    spec = tuning(pruner="median", parameters=ONE, trials=20)
    history = [finished(n, [1.0, 0.8, 0.6, 0.5]) for n in range(5)]
    assert prune_at(spec, history, running(5, [0.2, 0.1]), maximize=False) is None
    assert prune_at(spec, history, running(5, [3.0, 3.0]), maximize=False) == 1


def test_pruning_checks_each_epoch_once() -> None:
    spec = tuning(pruner="asha", parameters=ONE, trials=20)
    history = [finished(n, [v - 0.01 * n for v in GOOD]) for n in range(6)]
    trial = running(6, [0.99, 0.99])
    assert prune_at(spec, history, trial) is None
    assert trial.attrs is not None and trial.attrs["conveyor:checked"] == 2
    rungs = {k for k in trial.attrs if k.startswith("completed_rung_")}
    trial.values = [0.99, 0.99, 0.0, 0.0]  # a collapse after the checked epochs is judged on its own
    assert Study(spec, [*history, trial], True, max_epochs=9).check_pruning(trial) in (None, 3)
    assert rungs <= set(trial.attrs)


@pytest.mark.parametrize(
    ("pruner", "given", "epochs", "expected"),
    [
        ("median", None, 30, 3),
        ("hyperband", None, 5, 1),
        ("hyperband", None, 100, 10),
        ("median", 7, 30, 7),
        ("asha", None, 30, 1),
        ("asha", None, 100, 3),
        ("asha", None, 300, 11),
        ("asha", 7, 30, 7),
    ],
)
def test_pruners_wait_a_tenth_of_the_epochs_asha_its_first_of_three_rungs_unless_told(
    pruner: str, given: int | None, epochs: int, expected: int
) -> None:
    assert warmup_epochs(tuning(pruner=pruner, warmup_epochs=given), epochs) == expected


@pytest.mark.parametrize("epochs", [27, 30, 53, 54, 80, 81, 100, 242, 243, 1000])
def test_asha_by_default_has_three_rungs_once_training_is_long_enough(epochs: int) -> None:
    spec = tuning(pruner="asha")
    asha = make_pruner(spec, epochs)
    assert isinstance(asha, Asha)
    assert len(asha.rungs()) == 3, asha.rungs()


# --- pruning a user loop by step --------------------------------------------------------------------

MAX_STEPS = 900
STEPS = [90 * (i + 1) for i in range(10)]  # a user loop reporting every 90 steps up to maxSteps
GOOD_CURVE = [0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.95, 0.96]


def reported(number: int, values: list[float], state: str = "Running") -> TrialStatus:
    """A user-loop trial: its values and the step each was reported at."""
    done = state == "Succeeded"
    return TrialStatus(
        name=f"trial-{number:04d}",
        number=number,
        params={"optimizer.learningRate": 0.01},
        state=state,  # type: ignore[arg-type]
        values=values,
        steps=STEPS[: len(values)],
        value=max(values) if done else None,
    )


def step_study(spec: TuningSpec, trials: list[TrialStatus], maximize: bool = True) -> Study:
    resource = Resource.steps(spec, MAX_STEPS)
    return Study(spec, trials, maximize, max_epochs=1, resource=resource)


def replay(spec: TuningSpec, history: list[TrialStatus]) -> list[TrialStatus]:
    """The finished trials as they would be after the pruner saw each of their reports (rungs)."""
    replayed: list[TrialStatus] = []
    for past in history:
        live = past.model_copy(update={"state": "Running", "value": None})
        step_study(spec, [*replayed, live]).check_pruning(live)
        replayed.append(past.model_copy(update={"attrs": live.attrs}))
    return replayed


def prune_at_step(spec: TuningSpec, history: list[TrialStatus], trial: TrialStatus) -> int | None:
    """Offer the candidate after the replayed history; the step it is pruned at, or None."""
    report = step_study(spec, [*replay(spec, history), trial]).check_pruning(trial)
    return None if report is None else STEPS[report - 1]


@pytest.mark.parametrize(
    ("pruner", "warmup", "candidate", "expected"),
    [
        ("none", None, [0.1] * 10, None),
        # median: from the first report at or after warmupSteps (default maxSteps // 10 = 90)
        ("median", None, [0.1] * 10, 90),
        ("median", 250, [0.1] * 10, 270),
        ("median", None, [0.9, 0.95, 0.97, 0.98], None),
        # asha: rungs at warmupSteps * 3^k, none after maxSteps // 3 = 300
        ("asha", None, [0.1] * 10, 90),
        ("asha", 200, [0.1] * 10, 270),
        ("asha", None, [0.9, 0.95, 0.97, 0.98], None),
        # Optuna's next rung would be step 810 of 900: a nearly finished trial is not thrown away.
        ("asha", None, [*GOOD_CURVE[:8], 0.1, 0.1], None),
        ("hyperband", None, [0.99] * 10, None),
    ],
)
def test_user_loops_are_pruned_at_steps(
    pruner: str, warmup: int | None, candidate: list[float], expected: int | None
) -> None:
    spec = tuning(pruner=pruner, warmup_steps=warmup, parameters=ONE, trials=20)
    history = [reported(n, [v - 0.001 * n for v in GOOD_CURVE], "Succeeded") for n in range(18)]
    trial = reported(18, candidate)
    assert prune_at_step(spec, history, trial) == expected


def test_hyperband_prunes_a_bad_user_loop_at_a_rung_step() -> None:
    spec = tuning(pruner="hyperband", parameters=ONE, trials=20)
    history = [reported(n, [v - 0.001 * n for v in GOOD_CURVE], "Succeeded") for n in range(18)]
    pruned = prune_at_step(spec, history, reported(18, [0.1] * 10))
    # min resource 90, max 900, factor 3: a bracket's rungs are 90, 270 or 810 steps.
    assert pruned in (90, 270, 810)


def test_a_user_loops_values_are_keyed_by_step() -> None:
    spec = tuning(pruner="median", parameters=ONE, trials=20)
    trial = reported(0, [0.5, 0.6, 0.7])
    study = step_study(spec, [trial])
    frozen = study.study.get_trials(deepcopy=False)[0]
    assert frozen.intermediate_values == {90: 0.5, 180: 0.6, 270: 0.7}
    assert (
        step_study(spec, [trial.model_copy(update={"steps": None})]).study.get_trials()[0].intermediate_values
        == {}
    )


def test_a_rebuilt_study_decides_the_same_for_a_user_loop() -> None:
    """One report per reconcile, with the status written and read back between them (a restart at
    every step), decides exactly what one pass over all reports decides."""
    spec = tuning(pruner="asha", parameters=ONE, trials=20, warmup_steps=100)
    history = replay(spec, [reported(n, [v - 0.001 * n for v in GOOD_CURVE], "Succeeded") for n in range(6)])
    candidate = [0.9, 0.91, 0.2, 0.2, 0.2, 0.2]
    at_once = reported(6, candidate)
    expected = step_study(spec, [*history, at_once]).check_pruning(at_once)
    # Rungs at steps 100 and 300: promoted at step 180 (0.91), pruned at step 360, the first report
    # past the second rung (step 270 is below it).
    assert expected == 4
    live = reported(6, [])
    pruned = None
    for count in range(1, len(candidate) + 1):
        live = TrialStatus.model_validate(live.to_wire())  # status written and read back
        live.values, live.steps = candidate[:count], STEPS[:count]
        pruned = step_study(spec, [*history, live]).check_pruning(live)
        if pruned is not None:
            break
    assert pruned == expected
    assert live.attrs == at_once.attrs


@pytest.mark.parametrize(
    ("pruner", "given", "max_steps", "expected"),
    [
        ("median", None, 900, 90),
        ("median", None, 5, 1),
        ("median", None, None, 1),
        ("median", 40, 900, 40),
        ("asha", None, 900, 33),
        ("asha", 40, 900, 40),
    ],
)
def test_user_loops_warm_up_a_tenth_of_max_steps_asha_its_first_of_three_rungs_unless_told(
    pruner: str, given: int | None, max_steps: int | None, expected: int
) -> None:
    assert warmup_steps(tuning(pruner=pruner, warmup_steps=given), max_steps) == expected


def test_asha_on_a_user_loop_has_no_rung_after_a_third_of_max_steps() -> None:
    spec = tuning(pruner="asha")
    asha = make_pruner(spec, Resource.steps(spec, 900))
    assert isinstance(asha, Asha) and asha.rungs() == [33, 99, 297]
    assert isinstance(
        make_pruner(tuning(pruner="none"), Resource.steps(spec, None)), optuna.pruners.NopPruner
    )


@pytest.mark.parametrize(("tuned_max", "most"), [(None, "spec"), (1000, 1000), (2, "spec")])
def test_max_epochs(tuned_max: int | None, most: int | str) -> None:
    swept = small_tuning()
    if tuned_max is not None:
        epochs = {"name": "training.epochs", "type": "int", "min": 1, "max": tuned_max}
        swept["parameters"] = [*swept["parameters"], epochs]
    spec = make_spec(tuning=swept)
    assert spec.training.epochs > 2
    assert max_epochs(spec) == (spec.training.epochs if most == "spec" else most)


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"epochs": 30, "batchSize": 64}, ("epoch", 1, 30)),
        ({"epochs": 30, "entrypoint": "mypkg.loop:train", "maxSteps": 900}, ("step", 33, 900)),
        ({"epochs": 30, "command": ["python", "train.py"], "maxSteps": 50}, ("step", 1, 50)),
        ({"epochs": 30, "entrypoint": "mypkg.loop:train"}, ("step", 1, None)),  # no pruner, no bound
    ],
)
def test_pruners_count_epochs_of_conveyors_loop_and_steps_of_a_user_loop(
    training: dict[str, Any], expected: tuple[str, int, int | None]
) -> None:
    pruner = "asha" if "maxSteps" in training or "entrypoint" not in training else "none"
    spec = make_spec(training=training, tuning=small_tuning(pruner=pruner))
    found = resource(spec)
    assert (found.unit, found.warmup, found.most) == expected


@pytest.mark.parametrize(
    ("training", "pruner", "expected"),
    [
        ({"epochs": 27}, "asha", (1, 3, 9)),
        ({"epochs": 9}, "asha", (1, 3)),
        ({"epochs": 81}, "asha", (3, 9, 27)),  # the first rung a 27th of the epochs, the last a third
        ({"epochs": 27}, "median", ()),
        ({"epochs": 27}, "hyperband", ()),
        ({"epochs": 27}, "none", ()),
        ({"epochs": 27, "entrypoint": "mypkg.loop:train", "maxSteps": 900}, "asha", ()),
    ],
)
def test_trials_wait_for_a_verdict_at_ashas_rungs_of_conveyors_loop_only(
    training: dict[str, Any], pruner: str, expected: tuple[int, ...]
) -> None:
    spec = make_spec(training=training, tuning=small_tuning(pruner=pruner))
    assert verdict_epochs(spec) == expected


def test_no_verdict_without_tuning() -> None:
    assert verdict_epochs(make_spec(tuning=None, ensemble=None)) == ()
