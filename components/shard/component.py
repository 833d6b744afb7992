"""KFP components for write-shards: thin wrappers over :mod:`components.shard.core`.

Fan-out: ``plan_shard_groups`` lists the groups (``"I/G"``), one ``write_shard_group`` task
per group writes that group's shards, and ``merge_shards`` joins them. ``write_shards``
does all of it in one task (a process pool over the groups). Where shards go: with an empty
``out_dir``, beside the download (``…/raw`` → ``…/tarred/<settings>``), a key that changes
when the input or any setting changes.
"""

from typing import NamedTuple

from kfp import dsl

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def plan_shard_groups(input_dir: str, max_groups: int) -> list:
    """List the write-shards groups for an input: ``"I/G"`` for I in 0..G-1.

    Args:
        input_dir: the download's output directory (its card.json lists the files), a parquet
            directory or a NeMo manifest.
        max_groups: the most parallel tasks wanted; never more groups than parquet files
            (the lines of a manifest are dealt to all of them).

    Returns:
        The group specifiers, one per write_shard_group task.
    """
    from components.shard.plan import group_specs

    return group_specs(input_dir, max_groups)


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def write_shard_group(
    download_card: dsl.Input[dsl.Artifact],
    group: str,
    num_shards: int,
    seed: int,
    card: dsl.Output[dsl.Artifact],
    out_dir: str = "",
    min_duration: float = 0.1,
    max_duration: float = 0.0,
    resample: bool = True,
    full_decode: bool = False,
):
    """Validate one group of input files and write its range of NeMo tarred shards.

    Args:
        download_card: the download step's card; its ``out_dir`` is the input read (an artifact,
            not a string: a loop body then needs no upstream parameter, which ``kfp.local``
            would replace with the loop item).
        group: ``"I/G"`` from plan_shard_groups.
        num_shards: shards of the whole dataset (group I writes shards I*N//G .. (I+1)*N//G-1).
        seed: seed of the assignment of utterances to shards.
        card: this group's card (utterances, seconds, rejects by reason, its settings).
        out_dir: where the shards go; empty: beside the input (…/tarred/<settings>).
        min_duration: shortest utterance kept, seconds.
        max_duration: longest utterance kept, seconds; 0 for no limit.
        resample: convert audio that is not 16 kHz mono (False: reject it).
        full_decode: decode all audio instead of checking headers (slower, stricter).
    """
    import json

    from components.audio import Rules
    from components.download.card import DownloadCard
    from components.shard import core

    with open(download_card.path, encoding="utf-8") as stream:
        input_dir = DownloadCard.from_dict(json.load(stream), where=download_card.path).out_dir
    index, count = (int(part) for part in group.split("/"))
    rules = Rules(
        min_duration=min_duration,
        max_duration=max_duration or None,
        resample=resample,
        full_decode=full_decode,
    )
    group_card = core.write_shards(
        input_dir, out_dir or None, num_shards, seed, rules=rules, groups=count, group=index
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(group_card, out, sort_keys=True, indent=2)
    card.metadata.update({"utterances": group_card["utterances"], "out_dir": group_card["out_dir"]})


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def merge_shards(
    input_dir: str,
    group_cards: dsl.Input[list[dsl.Artifact]],
    card: dsl.Output[dsl.Artifact],
    max_reject_fraction: float = 0.01,
) -> NamedTuple("Outputs", [("out_dir", str)]):
    """Join the groups' shards: full manifest, metadata.yaml, rejects.jsonl, card, _SUCCESS.

    Args:
        input_dir: the same input the groups read.
        group_cards: the cards of every write_shard_group task (they carry the settings).
        card: the dataset's card (utterances, hours, rejects by reason, shard paths).
        max_reject_fraction: fail when more than this fraction of items is faulty.

    Returns:
        out_dir: the tarred dataset's directory.
    """
    import json
    from collections import namedtuple

    from components.shard import core

    groups = []
    for artifact in group_cards:
        with open(artifact.path, encoding="utf-8") as stream:
            groups.append(json.load(stream))
    result = core.merge_groups(input_dir, groups, max_reject_fraction)
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    card.metadata.update({key: result[key] for key in ("utterances", "hours", "rejected", "out_dir")})
    return namedtuple("Outputs", ["out_dir"])(result["out_dir"])


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def write_shards(
    input_dir: str,
    num_shards: int,
    seed: int,
    card: dsl.Output[dsl.Artifact],
    out_dir: str = "",
    min_duration: float = 0.1,
    max_duration: float = 0.0,
    resample: bool = True,
    full_decode: bool = False,
    max_reject_fraction: float = 0.01,
    groups: int = 0,
    workers: int = 0,
) -> NamedTuple("Outputs", [("out_dir", str)]):
    """Validate an input and write it as a NeMo tarred dataset, in one task.

    Args:
        input_dir: the download's output directory, a parquet directory or a NeMo manifest.
        num_shards: how many audio_<i>.tar shards.
        seed: seed of the assignment of utterances to shards.
        card: the dataset's card (utterances, hours, rejects by reason, shard paths).
        out_dir: where the shards go; empty: beside the input (…/tarred/<settings>).
        min_duration: shortest utterance kept, seconds.
        max_duration: longest utterance kept, seconds; 0 for no limit.
        resample: convert audio that is not 16 kHz mono (False: reject it).
        full_decode: decode all audio instead of checking headers (slower, stricter).
        max_reject_fraction: fail when more than this fraction of items is faulty.
        groups: independent groups (0: one per 8 parquet files, or per 256 KiB of a manifest);
            the output depends on it.
        workers: processes (0: the CPU count); the output does not depend on it.

    Returns:
        out_dir: the tarred dataset's directory.
    """
    import json
    import os
    from collections import namedtuple

    from components.audio import Rules
    from components.shard import core

    rules = Rules(
        min_duration=min_duration,
        max_duration=max_duration or None,
        resample=resample,
        full_decode=full_decode,
    )
    result = core.write_shards(
        input_dir,
        out_dir or None,
        num_shards,
        seed,
        rules=rules,
        max_reject_fraction=max_reject_fraction,
        workers=workers or os.cpu_count() or 1,
        groups=groups or None,
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    card.metadata.update({key: result[key] for key in ("utterances", "hours", "rejected", "out_dir")})
    return namedtuple("Outputs", ["out_dir"])(result["out_dir"])
