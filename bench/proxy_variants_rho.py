r"""What a proxy option does to the proxy-vs-full rank correlation, on cells already re-ranked.

    python bench/proxy_variants_rho.py --search_dir=/tmp/runs/random --cache_dir=<features> \
        --variant='ema={"ema_decay": 0.99}' --variant='kl={"distillation_weight": 1.0, "distillation_temperature": 2}'

The search's re-ranking (``deeplab_dpc.rerank``) recorded an end-to-end score for each of its cells.
This re-scores the same cells with the search's own proxy config plus each variant's overrides
(``ProxyConfig`` fields; the same seed, steps, filters) and prints, per variant, Spearman's rho
between the variant's proxy scores and the recorded full scores, beside the rho of the scores the
search recorded (``search``). A variant with distillation needs a cache made with
``cache_features --teacher_checkpoint_path``. One process runs every cell of a variant on
features loaded once; run it alone on the machine (trial times are printed). Prints the command first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search_dir", required=True)
    parser.add_argument("--cache_dir", help="features to re-score on (default: the search's)")
    parser.add_argument("--variant", action="append", default=[], help="name=JSON of ProxyConfig overrides")
    args = parser.parse_args(argv)
    print("command: python bench/proxy_variants_rho.py " + " ".join(f"'{a}'" for a in sys.argv[1:]), flush=True)

    from deeplab_dpc.nas import rerank as rerank_lib
    from deeplab_dpc.nas import trial_store
    from deeplab_dpc.nas.proxy import ProxyConfig, load_proxy_data, run_proxy
    from deeplab_dpc.nas.rank_correlation import spearman_rho

    config = rerank_lib.load_search_config(args.search_dir)
    study = rerank_lib.open_study(config)
    trials = {t.number: t for t in trial_store.all_trials(study)}
    records = {n: r for n, r in rerank_lib.full_scores(study).items() if r.get(rerank_lib.FULL_MIOU) is not None}
    numbers = sorted(records)
    specs = {n: rerank_lib.trial_spec(trials[n], config.space) for n in numbers}
    full = [float(records[n][rerank_lib.FULL_MIOU]) for n in numbers]
    recorded = [float(trials[n].user_attrs.get("miou", trial_store.trial_score(trials[n]))) for n in numbers]
    print(f"{len(numbers)} re-ranked cells: trials {numbers}")
    print(f"search (recorded proxy scores): rho {spearman_rho(recorded, full):.3f}")
    rows = {"search": recorded}
    for item in args.variant:
        name, _, overrides = item.partition("=")
        proxy = dict(config.proxy)
        if args.cache_dir:
            proxy["cache_dir"] = args.cache_dir
        proxy.update(json.loads(overrides))
        proxy_config = ProxyConfig.from_dict(proxy)
        data = load_proxy_data(proxy_config)
        start = time.perf_counter()
        scores = []
        for n in numbers:
            scores.append(float(run_proxy(specs[n], proxy_config, features=data)["miou"]))
            print(f"  {name}: trial {n} proxy {scores[-1] * 100:.2f} full {records[n][rerank_lib.FULL_MIOU] * 100:.2f}",
                  flush=True)
        rows[name] = scores
        print(f"{name} {overrides}: rho {spearman_rho(scores, full):.3f} "
              f"({(time.perf_counter() - start) / len(numbers):.0f} s per cell)", flush=True)
    print("\n| trial | full | " + " | ".join(rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for i, n in enumerate(numbers):
        print(f"| {n} | {full[i] * 100:.2f} | " + " | ".join(f"{rows[k][i] * 100:.2f}" for k in rows) + " |")
    print("| rho | | " + " | ".join(f"{spearman_rho(rows[k], full):.3f}" for k in rows) + " |")


if __name__ == "__main__":
    main()
