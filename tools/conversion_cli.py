"""The command line the conversion tools share: ``--output_dir`` and the sharding flags, and ``main``'s body.

The library (``deeplab_dpc.data.conversion``) takes a ``ShardingConfig`` and
raises ``ValueError``; the flags and ``app.UsageError`` live here, with the
tools.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from absl import app, flags

from deeplab_dpc import cli
from deeplab_dpc.data.conversion import ConversionResult, ShardingConfig

_log = logging.getLogger(__name__)

# The flags that ``define_sharding_flags`` defines belong to the tool that
# calls it (in ``--help`` and ``--helpshort``), not to this module.
flags.disclaim_key_flags()


def define_sharding_flags(
    flag_values: flags.FlagValues, *, num_shards: int = 4, num_shards_help: str = "Shards per split."
) -> None:
    """Defines ``--output_dir`` and the flags that ``sharding_from_flags`` reads.

    ``--num_shards`` (default ``num_shards``), ``--examples_per_shard``,
    ``--num_workers`` and ``--shuffle_seed``. The tool marks ``--output_dir``
    as required itself, with its other required flags (absl reports missing
    flags in the order they were marked).
    """
    fv = flag_values
    flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards.", flag_values=fv)
    flags.DEFINE_integer("num_shards", num_shards, num_shards_help, flag_values=fv)
    flags.DEFINE_integer("examples_per_shard", 0, "Examples per shard (overrides --num_shards when > 0).", flag_values=fv)
    flags.DEFINE_integer("num_workers", 0, "Encoding threads (0: one per CPU).", flag_values=fv)
    flags.DEFINE_integer("shuffle_seed", None, "Shuffle examples with this seed before sharding.", flag_values=fv)


def sharding_from_flags(fv: flags.FlagValues) -> ShardingConfig:
    """The ``ShardingConfig`` of the flags defined by ``define_sharding_flags``."""
    return ShardingConfig.from_flags(
        num_shards=fv.num_shards, examples_per_shard=fv.examples_per_shard,
        num_workers=fv.num_workers, shuffle_seed=fv.shuffle_seed,
    )


def run_tool(
    argv: Sequence[str],
    flag_values: flags.FlagValues,
    config_from_flags: Callable[[flags.FlagValues], Any],
    build: Callable[[Any], ConversionResult | Mapping[str, ConversionResult]],
) -> None:
    """The ``main`` of a conversion tool: builds the config from the flags, converts, logs each result.

    Args:
      argv: what ``app.run`` passes to ``main``; anything after the program
        name is a usage error.
      flag_values: the parsed flags.
      config_from_flags: flags -> the tool's config; a ``ValueError`` (a bad
        flag value, named by its field) becomes an ``app.UsageError`` naming the flag.
      build: config -> one ``ConversionResult`` or a dict of them (one per split).
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags(flag_values)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), flag_values)) from None
    results = build(config)
    if isinstance(results, ConversionResult):
        results = {results.split: results}
    for result in results.values():
        _log.info(result.summary())
