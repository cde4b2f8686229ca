"""Optuna ask/tell over a study rebuilt from status alone.

Nothing of Optuna outlives one reconcile. Each time, an in-memory study is rebuilt from the trials in
status (parameters, distributions, per-epoch values, state, and the few system attributes samplers and
pruners keep per trial: the grid id, ASHA/Hyperband rung values, the CMA-ES generation), then asked for
new trials or consulted about pruning, and whatever Optuna recorded is written back into status. So a
restart at any moment repeats nothing and loses nothing.

Determinism: the sampler of trial n is seeded from the pair (`seed`, n) (grid: `seed`, which orders
the grid), and its inputs are exactly what status holds, so rebuilding and asking again yields the
same parameters. A pair, not `seed + n`: with the sum, seed 1 replayed seed 0's trials shifted by
one, so studies with neighbouring seeds were nearly the same study. Pruning is evaluated report by report in
order (the last report checked is remembered per trial), exactly as if the trial had called
`trial.report` + `trial.should_prune` at every report in one process.

Choices: TPE and CMA-ES start with `max(2, min(10, trials // 3))` random trials (a small budget must
still leave room for the model); TPE uses the constant liar so parallel asks spread out; CMA-ES
samples categorical parameters with an independent random sampler (CMA-ES is continuous only); grid
search runs at most the size of the grid. ASHA and Hyperband use reduction factor 3 with
`warmupEpochs` as the minimum resource (ASHA's rule and its rungs, none in the last part of
training: `asha.Asha`); the median pruner waits for `warmupEpochs` and a few finished trials.
`warmupEpochs` defaults to a tenth of the epochs (one epoch says little about a learning rate, and
the median pruner and Hyperband's most aggressive bracket judge a trial on the first rung alone),
except under ASHA, whose default first rung is the largest that leaves it three rungs
(`asha_first_rung`: a 27th of the epochs, at least 1; Ray Tune's default grace period is 1 epoch).
With a tenth, ASHA always had exactly two rungs (w and 3w; 9w lies past epochs / 3), so a trial
promoted once and stopped at the next rung had trained nearly a third of the epochs (a ninth with
three rungs); ASHA stops only the trials below most of those that reached a rung, so judging early
costs little. Measured on issue 13's synthetic task (27 trials x 27 epochs, benchmarks/RESULTS.md;
Optuna's rule at every rung, as ASHA then had): three rungs spent 27% of random search's
trial-epochs (16 seeds, test metric +19 +- 22 samples over random's), two rungs 40.5% (8 seeds,
-5 +- 21). The reference digits pipeline (30 epochs) paid a little for the earlier rung alone:
0.9846 test accuracy on average instead of 0.9870 over 12 runs each (two thirds of an image of 270).

What TPE learns from a pruned trial (`sampler_view`): TPE asks from a copy of the study in which a
pruned trial counts as completed with its value (its best report, as a succeeded trial's value is its
best epoch); the pruner keeps the real states. Optuna's TPE ranks every completed trial above every
pruned one (pruned ones by furthest step, then value) and calls the best tenth "good" (1 trial of up
to 10). Under ASHA that is wrong in a way that matters with a small budget: the first trials to reach
a rung are always promoted, and with trials running in parallel those are the fastest, i.e. the
smallest models, so a tiny model that completed at chance became TPE's only example of "good" while
a trial stopped at the first rung with twice its accuracy counted as bad. Compared on their values,
the better one is good. Ray Tune's Optuna searcher does the same (it tells an ASHA-stopped trial
completed with its last value). Measured on issue 13's synthetic task (benchmarks/RESULTS.md): with 9
trials TPE's asks changed on few seeds (1 of 16 replayed, by +435 validation samples there), so this
is kept for being the right ranking rather than for a large average gain. Only TPE: random and grid
search ignore values, and CMA-ES keeps Optuna's default of leaving pruned trials out of its
generations.

A running trial that has reported counts the same way, completed with its best report so far; one
that has not stays running, so the constant liar still spreads parallel asks away from it. The liar
counts a running trial as the worst of all, and under ASHA the trials still running are the promoted
ones, i.e. the leaders: Conveyor's trials start in about a second, so while a leader trained its 27
epochs most of the others were stopped and finished, and TPE modelled "good" from stopped trials'
first-epoch values and asked away from the leaders. (Ray Tune's trials take ~20 s to start, so at
each of its asks more of its leaders had finished, which fits its search being ahead with the same
sampler, rungs and draws.) Measured on issue 13's synthetic task (27 trials x 27 epochs,
benchmarks/RESULTS.md): +30 +- 18 validation samples in the replay, 16 seeds; for real, seeds 8-15,
the default's test metric went from random search's +38 +- 39 samples to +85 +- 28, and from Ray
Tune's -58 +- 37 to -12 +- 23.

The resource a pruner counts (`Resource`): Conveyor's own loop reports once per epoch, so it counts
epochs. A user loop (`training.entrypoint` or `command`) reports through `conveyor.sdk.report` on a
step grid shared by every trial (a multiple of `maxSteps // 100`), and its reports are numbered but
not equally far apart in work, so it counts the reported `step`: intermediate values are keyed by step,
the minimum resource is `warmupSteps` (default a tenth of `maxSteps`, at least 1) and the maximum
`maxSteps` (Hyperband's max resource; ASHA's last rung at `maxSteps // 3`). Keyed by step, trials that
report on the same grid meet the median pruner and the rungs at the same points, whatever their
report count. A pruner on a user loop needs `maxSteps` (the spec refuses one without it); without a
pruner the resource is only carried along.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, assert_never

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from conveyor.operator.api.spec import TrainingPipelineSpec, TuningSpec
from conveyor.operator.api.status import TrialStatus
from conveyor.operator.engine.asha import REDUCTION_FACTOR, Asha

STUDY_NAME = "conveyor"
CHECKED_KEY = "conveyor:checked"  # last report (epoch, or user-loop report) the pruner has seen, per trial
# Attributes Optuna keeps that can be recomputed from the spec, so they are not stored per trial.
RECOMPUTED_ATTRS = frozenset({"search_space"})
# Per-ask caches a sampler reads only while sampling that same trial (TPE's relative parameters).
TRANSIENT_ATTR_PREFIXES = ("tpe:relative_params",)
# Large sampler state (the pickled CMA-ES optimizer) is kept once in status.tuning.samplerState.
LARGE_ATTR_PREFIX = "cma:optimizer"

optuna.logging.set_verbosity(logging.WARNING)

_STATE = {
    "Succeeded": TrialState.COMPLETE,
    "Failed": TrialState.FAIL,
    "Pruned": TrialState.PRUNED,
    "Pending": TrialState.RUNNING,
    "Running": TrialState.RUNNING,
    "Suspended": TrialState.RUNNING,
}


def distributions(tuning: TuningSpec) -> dict[str, BaseDistribution]:
    space: dict[str, BaseDistribution] = {}
    for p in tuning.parameters:
        if p.type == "categorical":
            space[p.name] = CategoricalDistribution(list(p.values or []))
        elif p.type == "int":
            assert p.min is not None and p.max is not None
            space[p.name] = IntDistribution(
                int(p.min), int(p.max), log=p.log, step=1 if p.log else int(p.step or 1)
            )
        else:
            assert p.min is not None and p.max is not None
            space[p.name] = FloatDistribution(p.min, p.max, log=p.log, step=None if p.log else p.step)
    return space


def grid(tuning: TuningSpec) -> dict[str, list[Any]]:
    return {p.name: list(p.values or []) for p in tuning.parameters}


def planned_trials(tuning: TuningSpec) -> int:
    """Trials the study runs: `trials`, or the size of the grid when that is smaller."""
    if tuning.algorithm == "grid":
        size = math.prod(len(values) for values in grid(tuning).values())
        return min(tuning.trials, size)
    return tuning.trials


def startup_trials(tuning: TuningSpec) -> int:
    return max(2, min(10, tuning.trials // 3))


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for trial `number` of a study seeded with `seed`: independent streams."""
    return int(np.random.SeedSequence((seed, number)).generate_state(1)[0])


def make_sampler(tuning: TuningSpec, number: int) -> optuna.samplers.BaseSampler:
    seed = trial_seed(tuning.seed, number)
    if tuning.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tuning.algorithm == "grid":
        # The seed shuffles the grid itself: it must stay the same for every ask, or grid ids
        # recorded by earlier trials would point at other points.
        return optuna.samplers.GridSampler(grid(tuning), seed=tuning.seed)
    if tuning.algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=startup_trials(tuning),
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False,
        )
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(tuning), constant_liar=True)


def warmup_epochs(tuning: TuningSpec, max_epochs: int) -> int:
    if tuning.warmup_epochs:
        return tuning.warmup_epochs
    return asha_first_rung(max_epochs) if tuning.pruner == "asha" else max(1, math.ceil(max_epochs / 10))


def warmup_steps(tuning: TuningSpec, max_steps: int | None) -> int:
    if tuning.warmup_steps:
        return tuning.warmup_steps
    most = max_steps or 0
    return asha_first_rung(most) if tuning.pruner == "asha" else max(1, most // 10)


def asha_first_rung(most: int) -> int:
    """The largest first rung that leaves ASHA three rungs: w, 3w and 9w, none past `most` / 3."""
    return max(1, most // REDUCTION_FACTOR**3)


@dataclass(frozen=True)
class Resource:
    """What pruners count: `unit`, from `warmup` (the minimum resource) to `most` (None: unknown)."""

    unit: Literal["epoch", "step"]
    warmup: int
    most: int | None

    @classmethod
    def epochs(cls, tuning: TuningSpec, max_epochs: int) -> Resource:
        """Conveyor's own loop: one report per epoch."""
        return cls("epoch", warmup_epochs(tuning, max_epochs), max_epochs)

    @classmethod
    def steps(cls, tuning: TuningSpec, max_steps: int | None) -> Resource:
        """A user loop: reports keyed by the step they were made at."""
        return cls("step", warmup_steps(tuning, max_steps), max_steps)


def make_pruner(tuning: TuningSpec, max_epochs: int | Resource) -> optuna.pruners.BasePruner:
    """The spec's pruner over `max_epochs` epochs of Conveyor's loop, or over a given `Resource`."""
    resource = max_epochs if isinstance(max_epochs, Resource) else Resource.epochs(tuning, max_epochs)
    warmup, most = resource.warmup, resource.most
    if tuning.pruner == "none":
        return optuna.pruners.NopPruner()
    assert most is not None, "a pruner needs training.maxSteps (checked with the spec)"
    if tuning.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=max(1, min(5, tuning.trials // 4)), n_warmup_steps=warmup
        )
    if tuning.pruner == "asha":
        return Asha(warmup, last_rung=max(warmup, most // REDUCTION_FACTOR))
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=warmup,
            max_resource=max(most, warmup),
            reduction_factor=REDUCTION_FACTOR,
        )
    assert_never(tuning.pruner)


def max_epochs(spec: TrainingPipelineSpec) -> int:
    """The most epochs any trial may run: the spec's, or the largest that tuning may choose."""
    assert spec.tuning is not None
    tuned = [int(p.max or 0) for p in spec.tuning.parameters if p.name == "training.epochs"]
    return max([spec.training.epochs, *tuned])


def resource(spec: TrainingPipelineSpec) -> Resource:
    """What the pruner counts: a user loop's steps up to `training.maxSteps`, else epochs."""
    assert spec.tuning is not None
    if spec.training.user_loop:
        return Resource.steps(spec.tuning, spec.training.max_steps)
    return Resource.epochs(spec.tuning, max_epochs(spec))


def verdict_epochs(spec: TrainingPipelineSpec) -> tuple[int, ...]:
    """The epochs after which a trial of Conveyor's loop waits for the pruner's verdict: ASHA's rungs,
    the only epochs where it decides whether a trial goes on. None for a user loop (it counts steps and
    asks `conveyor.sdk.should_stop` itself) or another pruner: the median pruner decides at every epoch,
    Hyperband at the rungs of a bracket chosen per trial."""
    if spec.tuning is None or spec.tuning.pruner != "asha" or spec.training.user_loop:
        return ()
    pruner = make_pruner(spec.tuning, resource(spec))
    assert isinstance(pruner, Asha)
    return tuple(pruner.rungs())


def report_steps(trial: TrialStatus, unit: Literal["epoch", "step"]) -> list[int | None]:
    """The resource each of the trial's reports was made at (index 0 = report 1): its epoch number,
    or the step it recorded (None where unknown: such a report is not offered to the pruner)."""
    if unit == "epoch":
        return list(range(1, len(trial.values) + 1))
    steps = list(trial.steps or [])
    return [*steps, *[None] * (len(trial.values) - len(steps))][: len(trial.values)]


def intermediate_values(trial: TrialStatus, unit: Literal["epoch", "step"]) -> dict[int, float]:
    """What Optuna's `trial.report` would have recorded: each finite value at its resource."""
    pairs = zip(report_steps(trial, unit), trial.values, strict=True)
    return {at: v for at, v in pairs if at is not None and v is not None and math.isfinite(v)}


def sampler_view(
    state: TrialState, value: float | None, intermediate: dict[int, float], maximize: bool
) -> tuple[TrialState, float | None]:
    """What TPE is told of a trial: a pruned one, or a running one that has reported, as completed with
    its best report (see the module docstring: ranked with the completed ones on its value, not below
    them all, nor as the constant liar's worst); others as they are."""
    if state not in (TrialState.PRUNED, TrialState.RUNNING) or not intermediate:
        return state, value
    return TrialState.COMPLETE, (max if maximize else min)(intermediate.values())


def _frozen(
    trial: TrialStatus,
    space: dict[str, BaseDistribution],
    extra_attrs: dict[str, Any],
    unit: Literal["epoch", "step"] = "epoch",
    maximize: bool | None = None,
) -> FrozenTrial:
    """The trial as Optuna records it; with `maximize` given, as the sampler is told of it
    (`sampler_view`)."""
    state = _STATE[trial.state]
    params = {name: value for name, value in trial.params.items() if name in space}
    intermediate = intermediate_values(trial, unit)
    value = trial.value if state == TrialState.COMPLETE else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL
    if maximize is not None:
        state, value = sampler_view(state, value, intermediate, maximize)
    return create_trial(
        state=state,
        value=value,
        params=params,
        distributions={name: space[name] for name in params},
        intermediate_values=intermediate,
        system_attrs={**(trial.attrs or {}), **extra_attrs},
    )


class Study:
    """An Optuna study rebuilt from status trials, for one reconcile."""

    def __init__(
        self,
        tuning: TuningSpec,
        trials: Sequence[TrialStatus],
        maximize: bool,
        max_epochs: int,
        sampler_state: dict[str, Any] | None = None,
        resource: Resource | None = None,
    ) -> None:
        """`resource` (a user loop's steps) replaces the `max_epochs` epochs of Conveyor's loop."""
        self.tuning = tuning
        self.space = distributions(tuning)
        self.resource = resource or Resource.epochs(tuning, max_epochs)
        self.maximize = maximize
        self.trials = sorted(trials, key=lambda t: t.number)
        self.sampler_state = sampler_state or {}
        self.study = self._build(sampler_view=False)  # the pruner's: the trials as they are
        self._asking: optuna.Study | None = None  # TPE's (`sampler_view`), built on its first ask
        # Optuna numbers trials in the order they are added, which is their status order.
        self.ids: dict[int, int] = {t.number: t._trial_id for t in self.study.get_trials(deepcopy=False)}

    def _build(self, sampler_view: bool) -> optuna.Study:
        """An Optuna study of the status trials; with `sampler_view`, as TPE is told of them."""
        study = optuna.create_study(
            storage=InMemoryStorage(),
            study_name=STUDY_NAME,
            direction="maximize" if self.maximize else "minimize",
            sampler=make_sampler(self.tuning, len(self.trials)),
            pruner=make_pruner(self.tuning, self.resource),  # Hyperband's brackets filter what TPE sees
        )
        recomputed: dict[str, Any] = {}
        if self.tuning.algorithm == "grid":
            sampler = make_sampler(self.tuning, 0)
            assert isinstance(sampler, optuna.samplers.GridSampler)
            recomputed["search_space"] = sampler._search_space
        large = self.sampler_state
        view = self.maximize if sampler_view else None
        for trial in self.trials:
            extra = dict(recomputed) if trial.attrs and "grid_id" in trial.attrs else {}
            if large.get("trial") == trial.number:
                extra.update(large.get("attrs", {}))
            study.add_trial(_frozen(trial, self.space, extra, self.resource.unit, view))
        return study

    # --- asking -----------------------------------------------------------------------------------

    def ask(self, number: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """Parameters of trial `number` (the next one), its attributes to keep, and large sampler state.
        TPE asks from its view of the study (`sampler_view`), and the new trial joins the pruner's too."""
        if self._asking is None:
            tpe = self.tuning.algorithm == "tpe"
            self._asking = self._build(sampler_view=True) if tpe else self.study
        self._asking.sampler = make_sampler(self.tuning, number)
        trial = self._asking.ask(fixed_distributions=self.space)
        assert trial.number == number, f"trial numbers out of step: {trial.number} != {number}"
        all_attrs = self._asking._storage.get_trial_system_attrs(trial._trial_id)
        if self._asking is not self.study:
            self.study.add_trial(
                create_trial(
                    state=TrialState.RUNNING,
                    params=dict(trial.params),
                    distributions=dict(trial.distributions),
                    system_attrs=all_attrs,
                )
            )
        self.ids[number] = self.study.get_trials(deepcopy=False)[-1]._trial_id
        attrs, large = self._split_attrs(all_attrs)
        return dict(trial.params), attrs, large

    @staticmethod
    def _split_attrs(attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        kept = {
            k: v
            for k, v in attrs.items()
            if k not in RECOMPUTED_ATTRS and not k.startswith(LARGE_ATTR_PREFIX)
        }
        large = {k: v for k, v in attrs.items() if k.startswith(LARGE_ATTR_PREFIX)}
        return kept, (large or None)

    # --- pruning ----------------------------------------------------------------------------------

    def check_pruning(self, trial: TrialStatus) -> int | None:
        """Feed the trial's unchecked reports to the pruner in order, each at its resource (epoch or
        step); the number of the report (1-based) it is pruned at, or None. Updates `trial.attrs` with
        what the pruner recorded (rung values, the last report checked)."""
        trial_id = self.ids[trial.number]
        storage = self.study._storage
        checked = int((trial.attrs or {}).get(CHECKED_KEY, 0))
        at = report_steps(trial, self.resource.unit)
        pruned_at = None
        for report in range(checked + 1, len(trial.values) + 1):
            resource = at[report - 1]
            if trial.values[report - 1] is None or resource is None:
                continue
            frozen = storage.get_trial(trial_id)
            view = FrozenTrial(
                number=frozen.number,
                state=frozen.state,
                value=None,
                datetime_start=frozen.datetime_start,
                datetime_complete=None,
                params=frozen.params,
                distributions=frozen.distributions,
                user_attrs={},
                system_attrs=frozen.system_attrs,
                intermediate_values={s: v for s, v in frozen.intermediate_values.items() if s <= resource},
                trial_id=trial_id,
            )
            checked = report
            if self.study.pruner.prune(self.study, view):
                pruned_at = report
                break
        attrs, _ = self._split_attrs(storage.get_trial_system_attrs(trial_id))
        attrs[CHECKED_KEY] = checked
        trial.attrs = attrs
        return pruned_at


def grid_points(tuning: TuningSpec) -> list[dict[str, Any]]:
    """Every point of a grid search (for tests and display)."""
    space = grid(tuning)
    return [dict(zip(space, combo, strict=True)) for combo in itertools.product(*space.values())]
