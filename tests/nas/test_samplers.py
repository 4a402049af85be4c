"""Search strategies: valid cells, deterministic for a seed, near-best mutation, aging evolution, TPE.

Each test drives an in-memory Optuna study with ask/tell and a fake score, so the strategies are
exercised exactly as the search uses them (``space.suggest_spec``), in milliseconds.
"""

import optuna
import pytest
from optuna.trial import TrialState

from deeplab_dpc.core.spec import SearchSpace
from deeplab_dpc.nas import samplers
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import trial_store
from tests.nas.fakes import score

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(strategy, n, *, space=None, fail=lambda spec: False, **options):
    """Runs ``n`` trials; returns the study and the proposed cells in order."""
    space = space or SearchSpace(num_branches=5)
    sampler = samplers.make_sampler(strategy, space, samplers.StrategyOptions(**options))
    multi = strategy in samplers.MULTI_OBJECTIVE  # score up, a cost down
    study = optuna.create_study(directions=["maximize", "minimize"] if multi else ["maximize"], sampler=sampler)
    cells = []
    for _ in range(n):
        trial = study.ask()
        spec = space_lib.suggest_spec(trial, space)
        cells.append(spec)
        if fail(spec):
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [score(spec), cost(spec)] if multi else score(spec))
    return study, cells


def cost(spec) -> float:
    """A stand-in cost: atrous convolutions cost more the larger their rates."""
    return float(sum(1 + sum(b.rate or (0,)) if b.op == "conv" else 1 for b in spec.branches))


@pytest.mark.parametrize("strategy", sorted(samplers.STRATEGIES))
def test_strategies_propose_valid_cells_deterministically(strategy):
    space = SearchSpace(num_branches=5)
    options = dict(population_size=6, sample_size=3, mutation_probability=0.5, mutation_top_k=3)
    _, first = run(strategy, 24, space=space, seed=7, **options)
    _, again = run(strategy, 24, space=space, seed=7, **options)
    _, other = run(strategy, 24, space=space, seed=8, **options)
    for spec in first:
        space.validate(spec)
    assert first == again
    assert first != other


def test_strategies_respect_the_number_of_branches():
    for strategy in samplers.STRATEGIES:
        _, cells = run(
            strategy, 12, space=SearchSpace(num_branches=3), seed=1, population_size=4, sample_size=2
        )
        assert all(len(c.branches) == 3 for c in cells)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"strategy='bayes' unknown; valid strategies: \['evolution', 'nsga2', 'random', 'rl', 'tpe'\]"
    ):
        samplers.make_sampler("bayes", SearchSpace(), samplers.StrategyOptions())


@pytest.mark.parametrize(
    "options, field",
    [
        (dict(mutation_probability=1.5), "mutation_probability"),
        (dict(mutation_top_k=0), "mutation_top_k"),
        (dict(population_size=3, sample_size=4), "sample_size"),
    ],
)
def test_strategy_options_are_validated(options, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        samplers.StrategyOptions(**options)


def test_random_without_mutation_is_uniform():
    study, _ = run("random", 15, seed=0, mutation_probability=0.0)
    assert {t.user_attrs["proposal"] for t in study.trials} == {"uniform"}


def test_random_mutates_one_of_the_top_k_completed_cells():
    space = SearchSpace(num_branches=5)
    study, cells = run("random", 40, space=space, seed=3, mutation_probability=1.0, mutation_top_k=3)
    trials = study.trials
    assert trials[0].user_attrs["proposal"] == "uniform"  # nothing to mutate yet
    for trial in trials[1:]:
        assert trial.user_attrs["proposal"] == "mutation"
        parent = trial.user_attrs["parent"]
        done_before = [t for t in trials[: trial.number] if t.state == TrialState.COMPLETE]
        top3 = sorted(done_before, key=lambda t: -t.value)[:3]
        assert parent in [t.number for t in top3]
        # One mutation: the child differs from its parent in exactly one branch and is another graph.
        child, mother = cells[trial.number], cells[parent]
        assert sum(a != b for a, b in zip(child.branches, mother.branches)) == 1
        assert not child.same_graph(mother)


def test_random_never_mutates_a_failed_cell():
    fail = lambda spec: spec.branches[0].op == "pyramid_pooling"  # noqa: E731
    study, _ = run("random", 60, seed=5, mutation_probability=0.8, mutation_top_k=50, fail=fail)
    failed = {t.number for t in study.trials if t.state == TrialState.FAIL}
    parents = {t.user_attrs.get("parent") for t in study.trials} - {None}
    assert failed, "the test needs failures"
    assert parents and not parents & failed


def test_evolution_starts_uniform_then_mutates_tournament_winners_of_the_living_population():
    space = SearchSpace(num_branches=5)
    population, sample = 5, 3
    study, cells = run("evolution", 40, space=space, seed=11, population_size=population, sample_size=sample)
    trials = study.trials
    assert [t.user_attrs["proposal"] for t in trials[:population]] == ["uniform"] * population
    for trial in trials[population:]:
        assert trial.user_attrs["proposal"] == "mutation"
        living = list(range(trial.number - population, trial.number))  # the oldest have died
        tournament = trial.user_attrs["tournament"]
        assert set(tournament) <= set(living) and 1 <= len(tournament) <= sample
        parent = trial.user_attrs["parent"]
        assert parent == max(tournament, key=lambda n: trials[n].value)
        assert sum(a != b for a, b in zip(cells[trial.number].branches, cells[parent].branches)) == 1


def test_evolution_ages_out_the_best_cell():
    """The best cell of all stops being a parent once population_size younger trials completed."""
    space = SearchSpace(num_branches=5)
    sampler = samplers.make_sampler(
        "evolution", space, samplers.StrategyOptions(seed=0, population_size=4, sample_size=4)
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(30):
        trial = study.ask()
        spec = space_lib.suggest_spec(trial, space)
        study.tell(trial, 1.0 if i == 0 else score(spec))  # trial 0 is by far the best
    parents = [t.user_attrs.get("parent") for t in study.trials]
    # sample_size == population_size: while trial 0 lives it is drawn often; after trials 1-4 it is dead.
    assert 0 not in parents[5:]
    assert all(p is None for p in parents[:4])


def test_evolution_population_ignores_failed_trials():
    fail = lambda spec: spec.branches[0].op == "conv"  # noqa: E731
    study, _ = run("evolution", 50, seed=2, population_size=4, sample_size=2, fail=fail)
    failed = {t.number for t in study.trials if t.state == TrialState.FAIL}
    members = set().union(*(t.user_attrs.get("tournament", []) for t in study.trials))
    assert failed and members and not members & failed


def test_tpe_records_its_proposals_and_learns_only_from_complete_trials():
    study, cells = run("tpe", 20, seed=4, fail=lambda spec: spec.branches[0].op == "pyramid_pooling")
    assert study.sampler._constant_liar is False
    assert len({c.canonical_hash() for c in cells}) > 10


def test_trial_seeds_differ_per_trial_and_seed():
    seeds = {samplers.trial_seed(s, n) for s in range(3) for n in range(100)}
    assert len(seeds) == 300
    assert samplers.trial_seed(1, 5) == samplers.trial_seed(1, 5)


def test_nsga2_moves_its_population_toward_the_pareto_front():
    # The fake score is a hash of the cell (nothing to learn); the cost is learnable. Breeding from the
    # non-dominated cells, NSGA-II's sixth generation costs far less than its first, random, one; a
    # random search's does not.
    def mean_cost(cells):
        return sum(cost(c) for c in cells) / len(cells)

    study, cells = run("nsga2", 60, seed=3, population_size=10)
    assert mean_cost(cells[-10:]) < 0.7 * mean_cost(cells[:10])
    _, uniform = run("random", 60, seed=3, mutation_probability=0.0)
    assert mean_cost(uniform[-10:]) > 0.9 * mean_cost(uniform[:10])
    assert len(study.best_trials) >= 2  # a front, not one best cell


@pytest.mark.parametrize("hidden", [True, False])
def test_tpe_never_reads_a_prefiltered_proposal(monkeypatch, hidden):
    # Optuna's TPE reads PRUNED trials, those without intermediate values as its worst observations
    # (and counts them toward its startup trials): the search's TPE is shown the study without the
    # proposals the zero-cost pre-filter set aside. The control (hidden=False, Optuna's own TPE) sees them.
    from optuna.samplers._tpe import sampler as tpe_module  # noqa: PLC0415

    seen = []
    split = tpe_module._split_trials
    def spy(study, trials, n_below):
        seen.append({t.number for t in trials})
        return split(study, trials, n_below)

    monkeypatch.setattr(tpe_module, "_split_trials", spy)
    space = SearchSpace(num_branches=2)
    if hidden:
        sampler = samplers.make_sampler("tpe", space, samplers.StrategyOptions(seed=1))
    else:
        sampler = optuna.samplers.TPESampler(seed=1, multivariate=True, n_startup_trials=10)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    prefiltered = set()
    for _ in range(12):
        for _ in range(2):  # two proposals set aside, recorded as the search records them
            trial = study.ask()
            space_lib.suggest_spec(trial, space)
            trial.set_user_attr(trial_store.PRUNED_BY, trial_store.PREFILTER)
            study.tell(trial, state=TrialState.PRUNED)
            prefiltered.add(trial.number)
        trial = study.ask()
        study.tell(trial, score(space_lib.suggest_spec(trial, space)))
    assert all(trial_store.is_prefiltered(t) == (t.number in prefiltered) for t in study.trials)
    shown = samplers.without_prefiltered(study).get_trials()
    assert shown == [t for t in study.trials if t.number not in prefiltered]
    if hidden:
        assert seen and not set().union(*seen) & prefiltered  # past the startup trials, none read
        # Its 10 startup trials are 10 completed ones (not the first 10 trials, 7 of them pre-filtered):
        # TPE proper starts with the 11th round's three proposals.
        assert len(seen) == 6
    else:
        assert set().union(*seen) & prefiltered
