"""The search's default objective: the proxy trainer on cached backbone features.

``proxy_objective(config)`` runs once per worker process: it loads the cached
features once (``load_proxy_data``) and returns ``objective(spec)``, which
trains the cell on them (``run_proxy``) and returns its result dict
(``miou``, ``params``, ``madds``, ``seconds``, ...). A trial that diverges
raises the proxy's ``TrialFailed``, which the worker records as a failure.

Other objectives plug in the same way (``--objective=module:function``): a
function taking the ``SearchConfig`` and returning ``objective(spec)``. With a
pruner (``--pruner``), the objective must also take ``report=``, a function it
calls as ``report(step, score)`` with each intermediate score; ``report``
raises Optuna's ``TrialPruned`` when the pruner stops the trial.

Zero-cost scores (``--zero_cost_scores``, ``--prefilter``) need the objective
to carry ``objective.zero_cost(spec, names) -> {name: score}`` (names of
``nas.zero_cost.SCORES``, higher predicting better): the proxy's is
``zero_cost.score_cell`` on the proxy's own model at initialisation and its
first training batch, sharing the features the objective loaded.

Several cells per program (``--cells_per_worker``) need ``objective.group(specs) -> [result or
exception per cell]``: the proxy's is ``run_proxy_group`` on the same features.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from deeplab_dpc.core.spec import CellSpec


def proxy_objective(config) -> Callable[[CellSpec], Mapping[str, Any]]:
    """The proxy trainer with ``config.proxy`` (``ProxyConfig.to_dict()``), features loaded once."""
    try:
        from deeplab_dpc.nas.proxy import ProxyConfig, load_proxy_data, run_proxy, run_proxy_group  # noqa: PLC0415
    except ImportError as e:
        raise RuntimeError(f"the proxy trainer (deeplab_dpc.nas.proxy) cannot be imported: {e}") from e
    proxy_config = ProxyConfig.from_dict(dict(config.proxy))
    features = load_proxy_data(proxy_config)

    def objective(spec: CellSpec, report: Callable[[int, float], None] | None = None) -> Mapping[str, Any]:
        return run_proxy(spec, proxy_config, features=features, report=report)

    def zero_cost(spec: CellSpec, names: Sequence[str]) -> dict[str, float]:
        from deeplab_dpc.nas.zero_cost import score_cell  # noqa: PLC0415

        result = score_cell(spec, proxy_config, features, tuple(names))
        return {name: float(result[name]) for name in names}

    def group(specs: Sequence[CellSpec]) -> list:
        return run_proxy_group(specs, proxy_config, features=features)

    objective.zero_cost = zero_cost
    objective.group = group
    return objective
