"""Choosing a dataset's data files for a config and split: the same rules for the hub and copies of it.

The dataset card (``README.md``) is parsed by huggingface_hub's :class:`~huggingface_hub.DatasetCard`
and its globs are translated by fsspec (what ``HfFileSystem.glob`` and the ``datasets``
library use), so ``data_files`` mean here what they mean on the hub. The rest is ours: which
config is the default, where parquet files are when no card says, and an error that shows the
layout a source has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from components.download.errors import DownloadError

DEFAULT_CONFIG = "default"
DEFAULT_SPLIT = "train"
PARQUET_SUFFIX = ".parquet"
README_NAME = "README.md"
"""The dataset card, whose YAML header may list ``configs`` and their ``data_files``."""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as the hub's ``data_files`` mean it: ``*`` and ``?`` stay inside one directory,
    ``**`` (a whole path component) crosses directories, ``[…]`` is a character class."""
    from fsspec.utils import glob_translate

    try:
        return re.compile(glob_translate(pattern))
    except ValueError as err:
        raise DownloadError(f"data files pattern {pattern!r}: {err}") from None


def card_configs(card_data: Any) -> list[dict[str, Any]] | None:
    """The ``configs`` of a dataset card's metadata (huggingface_hub's ``CardData``), or None."""
    configs = card_data.get("configs") if card_data is not None else None
    return configs if isinstance(configs, list) and configs else None


def readme_configs(readme: str) -> list[dict[str, Any]] | None:
    """The ``configs`` list from a dataset card's YAML header, or None when it has none."""
    import yaml
    from huggingface_hub import DatasetCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    if not REGEX_YAML_BLOCK.search(readme):
        return None  # a plain README (DatasetCard would log a warning for it)
    try:
        card = DatasetCard(readme)
    except yaml.YAMLError as err:
        raise DownloadError(f"{README_NAME}: the YAML header does not parse: {err}") from None
    except ValueError:  # a header that is not a mapping: not a dataset card's
        return None
    return card_configs(card.data)


def split_patterns(data_files: Any) -> dict[str, list[str]]:
    """A card's ``data_files`` (a string, a list, a list of {split, path} or a mapping) by split.

    Ours rather than ``datasets.data_files.sanitize_patterns``: ``datasets`` is not in the
    data image, and this one passes over entries it cannot use instead of failing.
    """
    if isinstance(data_files, str):
        return {DEFAULT_SPLIT: [data_files]}
    if isinstance(data_files, dict):
        return {split: [p] if isinstance(p, str) else list(p) for split, p in data_files.items()}
    out: dict[str, list[str]] = {}
    for item in data_files or []:
        if isinstance(item, str):
            out.setdefault(DEFAULT_SPLIT, []).append(item)
        elif isinstance(item, dict) and "path" in item:
            path = item["path"]
            out.setdefault(item.get("split", DEFAULT_SPLIT), []).extend(
                [path] if isinstance(path, str) else path
            )
    return out


def default_patterns(config: str, split: str) -> list[str]:
    """Where data files are when no card says: the hub's parquet conventions."""
    patterns = [
        f"{config}/{split}-*.parquet",
        f"{config}/{split}/**/*.parquet",
        f"{config}/{split}.parquet",
    ]
    if config == DEFAULT_CONFIG:
        patterns += [f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}/**/*.parquet"]
    return patterns


def describe_layout(paths: Iterable[str]) -> str:
    """The parquet files there are, grouped like ``clean/train-*-of-*.parquet (4 files)``."""
    groups: dict[str, int] = {}
    for path in paths:
        if not path.endswith(PARQUET_SUFFIX):
            continue
        directory, _, name = path.rpartition("/")
        key = (f"{directory}/" if directory else "") + re.sub(r"\d+", "*", name)
        groups[key] = groups.get(key, 0) + 1
    if not groups:
        return "no parquet files at all"
    return ", ".join(f"{key} ({n} file{'s' if n > 1 else ''})" for key, n in sorted(groups.items()))


def choose_config(configs: list[dict[str, Any]] | None, paths: Sequence[str]) -> str:
    """The config to use when none is given: the only one, or the card's default."""
    if configs:
        names = [str(entry.get("config_name", DEFAULT_CONFIG)) for entry in configs]
        defaults = [str(e.get("config_name", DEFAULT_CONFIG)) for e in configs if e.get("default")]
        if defaults:
            return defaults[0]
        if len(names) == 1 or DEFAULT_CONFIG in names:
            return names[0] if len(names) == 1 else DEFAULT_CONFIG
        raise DownloadError(f"give --config: the dataset card lists configs {', '.join(names)}")
    parquet = [p for p in paths if p.endswith(PARQUET_SUFFIX)]
    tops = sorted({p.split("/", 1)[0] for p in parquet if "/" in p})
    if any("/" not in p or p.startswith("data/") for p in parquet):
        return DEFAULT_CONFIG
    if len(tops) == 1:
        return tops[0]
    raise DownloadError(f"give --config: found {describe_layout(paths)}")


def select_files(
    paths: Sequence[str],
    config: str,
    split: str,
    configs: list[dict[str, Any]] | None = None,
    pattern: str | None = None,
) -> list[str]:
    """The parquet files of one config and split, sorted.

    ``pattern`` (``{config}`` and ``{split}`` are filled in) wins; else the card's
    ``configs``; else :func:`default_patterns`. Finding none is an error that lists what the
    source has.
    """
    if pattern:
        patterns = [pattern.format(config=config, split=split)]
        origin = f"--pattern {patterns[0]}"
    elif configs:
        by_name = {str(entry.get("config_name", DEFAULT_CONFIG)): entry for entry in configs}
        if config not in by_name:
            raise DownloadError(f"config {config!r} is not in the dataset card; it has {', '.join(by_name)}")
        splits = split_patterns(by_name[config].get("data_files"))
        if split not in splits:
            raise DownloadError(f"config {config!r} has no split {split!r}; it has {', '.join(splits)}")
        patterns = splits[split]
        origin = f"the dataset card ({', '.join(patterns)})"
    else:
        patterns = default_patterns(config, split)
        origin = f"the usual layout ({patterns[0]})"
    regexes = [glob_regex(p) for p in patterns]
    chosen = sorted(p for p in paths if p.endswith(PARQUET_SUFFIX) and any(r.match(p) for r in regexes))
    if not chosen:
        raise DownloadError(
            f"no parquet files for config {config!r}, split {split!r} by {origin}; "
            f"the source has {describe_layout(paths)}"
        )
    return chosen
