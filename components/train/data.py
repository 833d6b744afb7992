"""Training data for NeMo's Lhotse dataloading: tarred shards, bucket bins, validation sets.

Shards are read where they are. Local shards are plain (absolute) paths. Shards on ``gs://``
are streamed with a ``pipe:`` command (NeMo's Lhotse tarred reader runs it and reads the tar
from its stdout): ``exec python -m components.train.cat 'gs://…/audio_<i>.tar'``, which reads
with google-cloud-storage, so Workload Identity and ``STORAGE_EMULATOR_HOST`` apply and the
image needs no gcloud. The small sharded manifests are copied to local disk first.

Paths and shells. Lhotse runs a ``pipe:`` specifier with ``shell=True``
(``lhotse/serialization.py:751``, ``PipeIOBackend.open`` -> ``lhotse/utils.py:1025``, ``Pipe``);
so every word of the command is ``shlex.quote``-d. NeMo expands the specifier *before* that,
in Python (``LazyNeMoTarredIterator.__init__``, ``nemo_adapters.py:306/329`` ->
``nemo/collections/asr/data/audio_to_text.py:183``): it rewrites ``(``/``[``/``<``/``_OP_``
into ``{`` and ``)``/``]``/``>``/``_CL_`` into ``}`` anywhere in the string and brace-expands
it, quotes or not. Brace expansion therefore still works on a quoted command, and a path
holding one of those characters cannot be given to NeMo at all: such paths (and control
characters, which GCS object names may not hold either) are refused with a message naming
the character, and every specifier is expanded with NeMo's own function and checked against
the paths meant before training starts.

Damaged shards. Before training every shard is checked cheaply (its size against its
manifest and metadata.yaml, its first tar header, the end-of-archive blocks; two small reads
a shard, not a decode). During training NeMo skips a shard it cannot read with a warning only
(``nemo_adapters.py:581``); :class:`ShardHealth` hooks that warning and makes it fatal unless
``max_bad_shards`` allows it, and the card lists what was skipped.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from components import layout, manifest, storage

log = logging.getLogger("asrflow.train")


def _id_regex(name: str, token: str) -> re.Pattern[str]:
    """A regex for the layout's file name ``name`` (made with ``token`` as the shard id) that
    captures the id."""
    return re.compile(re.escape(storage.basename(name)).replace(re.escape(token), r"(\d+)") + "$")


_TAR = _id_regex(layout.tar_pattern("ID"), "ID")
_SHARD_MANIFEST = _id_regex(layout.sharded_manifest_name("ID"), "ID")
# How NeMo finds the shard id in a specifier (nemo_adapters.py, LazyNeMoTarredIterator.__init__)
_NEMO_TAR_ID = re.compile(r"audio[^/]*_(\d+)[^/]*\.tar")
_NEMO_MANIFEST_ID = re.compile(r"manifest[^/]*_(\d+)[^/]*\.json")
# What NeMo's expand_sharded_filepaths rewrites into braces, wherever it occurs
NEMO_BRACKETS = "()[]<>{}"
NEMO_BRACE_TOKENS = ("_OP_", "_CL_")
CAT_MODULE = "components.train.cat"
TAR_BLOCK = tarfile.BLOCKSIZE


class DataError(ValueError):
    """Training or validation data that cannot be used; the message names the file."""


class BadShardsError(DataError):
    """Shards that cannot be read, more than ``max_bad_shards`` allows (or all of them)."""


@dataclasses.dataclass(frozen=True)
class BadShard:
    """A shard left out of training: its id, where it is, what is wrong, and when it was found."""

    shard_id: int
    uri: str
    reason: str
    when: str = "before training"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_nemo_path(path: str, what: str) -> None:
    """Refuse a path that NeMo's loaders or a shell would read as something else.

    Args:
        path: a local path or gs:// URI that reaches NeMo's data specifiers.
        what: how the message names it ("tarred dataset", "run directory", ...).

    Raises:
        DataError: naming the character (and its position) and why it cannot be used.
    """
    for index, char in enumerate(path):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise DataError(
                f"{what} {path!r}: the control character {char!r} at position {index} cannot be used "
                "in a data path (GCS object names may not hold it, and NeMo's manifests and specifiers "
                "are line- and word-based); rename it"
            )
        if char in NEMO_BRACKETS:
            raise DataError(
                f"{what} {path!r}: the character {char!r} at position {index} cannot be used in a data "
                "path: NeMo's sharded-path expansion rewrites ( [ < into { and ) ] > into } anywhere in "
                "the path (nemo/collections/asr/data/audio_to_text.py, expand_sharded_filepaths); "
                "rename it or copy the data to a path without it"
            )
    for token in NEMO_BRACE_TOKENS:
        if token in path:
            raise DataError(
                f"{what} {path!r}: {token!r} at position {path.index(token)} cannot be used in a data "
                "path: NeMo's sharded-path expansion reads it as a brace; rename it"
            )
    if not storage.is_gcs(path) and re.search(r"\.tar(\.gz|\.bz2|\.xz)?/", path):
        raise DataError(
            f"{what} {path!r}: a directory whose name ends in .tar cannot be used in a data path: "
            "Lhotse opens PATH.tar/REST as the member REST inside the archive PATH.tar; rename it"
        )


def pipe_command(uri: str) -> str:
    """The ``pipe:`` specifier that streams ``uri`` through ``python -m components.train.cat``.

    Every word is shell-quoted (Lhotse runs it with ``shell=True``) and the shell ``exec``-s
    Python, so the reader is a direct child of the process that reads the shard (it watches
    that parent, and stops when it dies).
    """
    return f"pipe:exec {shlex.quote(sys.executable)} -m {CAT_MODULE} {shlex.quote(uri)}"


def _brace_ids(ids: list[int]) -> str:
    """NeMo's ``_OP_…_CL_`` range (or list) of shard ids."""
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"_OP_{ids[0]}..{ids[-1]}_CL_"
    return "_OP_" + ",".join(str(i) for i in ids) + "_CL_"


def _nemo_expand(spec: str) -> list[str]:
    from nemo.collections.common.data.lhotse.nemo_adapters import expand_sharded_filepaths

    return [str(p) for p in expand_sharded_filepaths(spec)]


def _check_spec(spec: str, expected: list[str], ids: list[int], pattern: re.Pattern[str], what: str) -> None:
    """Expand ``spec`` with NeMo's own function and check it gives ``expected``, with the right ids."""
    got = _nemo_expand(spec)
    if got != expected:
        raise DataError(
            f"{what}: NeMo would expand {spec!r} into {got[:2]}… instead of {expected[:2]}…; "
            "rename the directory (see the characters NeMo rewrites in the asrflow train docs)"
        )
    for path, shard_id in zip(expected, ids, strict=True):
        match = pattern.search(path)
        if match is None or int(match.group(1)) != shard_id:
            raise DataError(
                f"{what}: NeMo would take {path!r} for shard {match.group(1) if match else '?'}, "
                f"not {shard_id}; rename the directory"
            )
    for path in expected:
        if path.startswith("pipe:"):
            words = shlex.split(path[len("pipe:") :])
            if len(words) != 5 or words[:4] != ["exec", sys.executable, "-m", CAT_MODULE]:
                raise DataError(f"{what}: the shell would split {path!r} into {words}")


@dataclasses.dataclass(frozen=True)
class TarredDataset:
    """Where NeMo's Lhotse loader finds a tarred dataset, and what its metadata says.

    Attributes:
        uri: the tarred directory (local or gs://).
        num_shards: shards ``0..num_shards-1`` in the directory.
        manifest_filepath: NeMo sharded-manifest specifier (``manifest__OP_0..N_CL_.json``).
        tarred_audio_filepaths: NeMo tar specifier, a local path or a ``pipe:`` command.
        metadata: the parsed ``metadata.yaml`` (empty when there is none).
        shard_ids: the shards training reads (all but ``bad_shards``).
        tar_paths: what NeMo expands ``tarred_audio_filepaths`` into, one per id in ``shard_ids``.
        bad_shards: shards the check before training found damaged and left out.
        manifest_paths: the (local) sharded manifest of every shard, by shard id.
    """

    uri: str
    num_shards: int
    manifest_filepath: str
    tarred_audio_filepaths: str
    metadata: dict[str, Any]
    shard_ids: tuple[int, ...] = ()
    tar_paths: tuple[str, ...] = ()
    bad_shards: tuple[BadShard, ...] = ()
    manifest_paths: tuple[str, ...] = ()

    def bucket_duration_bins(self) -> list[float] | None:
        """The bins estimate-buckets wrote into metadata.yaml, or None.

        Looked up where NeMo keeps them (``dataset_config.bucket_duration_bins``), then in the
        ``buckets`` section estimate-buckets adds, then at the top level.
        """
        bins = None
        for section in (self.metadata.get("dataset_config"), self.metadata.get("buckets"), self.metadata):
            if isinstance(section, dict) and section.get("bucket_duration_bins") is not None:
                bins = section["bucket_duration_bins"]
                break
        if bins is None:
            return None
        if not isinstance(bins, list) or not bins or not all(isinstance(b, (int, float)) for b in bins):
            where = storage.join(self.uri, layout.METADATA_NAME)
            raise DataError(f"{where}: bucket_duration_bins must be a list of numbers")
        return [float(b) for b in bins]

    def hours(self) -> float | None:
        """Hours of audio, as write-shards recorded them (``asrflow.hours``), or None."""
        for section in (self.metadata.get("asrflow"), self.metadata):
            if isinstance(section, dict) and isinstance(section.get("hours"), (int, float)):
                return float(section["hours"])
        return None

    def shard_hours(self, shard_ids: Iterable[int]) -> float:
        """Hours of audio the sharded manifests list for these shards."""
        seconds = 0.0
        for shard_id in set(shard_ids):
            if 0 <= shard_id < len(self.manifest_paths):
                seconds += sum(
                    float(e.get("duration", 0.0)) for e in _read_jsonl(self.manifest_paths[shard_id])
                )
        return seconds / 3600

    def tar_uri(self, shard_id: int) -> str:
        return storage.join(self.uri, layout.tar_name(shard_id))


SOURCE_TAG = "asrflow_source"
"""The custom field NeMo's ``input_cfg`` ``tags`` put on every cut of a mixture: its source's index."""


@dataclasses.dataclass(frozen=True)
class MixedDataset:
    """Several tarred datasets trained on as one weighted mixture (NeMo's Lhotse ``input_cfg``).

    It offers the shard view :class:`ShardHealth` and the card read from a
    :class:`TarredDataset`, with the shards of all sources numbered in order: source ``k``'s
    shard ``i`` is shard ``offset(k) + i`` of the mixture (a bad shard's ``uri`` names it).

    Attributes:
        datasets: the sources, TARRED_DIR first.
        weights: their weights, as given.
        temperature: NeMo's ``reweight_temperature``.
    """

    datasets: tuple[TarredDataset, ...]
    weights: tuple[float, ...]
    temperature: float = 1.0

    @property
    def uri(self) -> str:
        return self.datasets[0].uri

    @property
    def num_shards(self) -> int:
        return sum(d.num_shards for d in self.datasets)

    def offset(self, index: int) -> int:
        """The mixture's id of source ``index``'s shard 0."""
        return sum(d.num_shards for d in self.datasets[:index])

    def _locate(self, shard_id: int) -> tuple[TarredDataset, int]:
        for index, dataset in enumerate(self.datasets):
            local = shard_id - self.offset(index)
            if 0 <= local < dataset.num_shards:
                return dataset, local
        raise IndexError(f"no shard {shard_id} in a mixture of {self.num_shards}")

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return tuple(self.offset(k) + i for k, d in enumerate(self.datasets) for i in d.shard_ids)

    @property
    def tar_paths(self) -> tuple[str, ...]:
        return tuple(path for d in self.datasets for path in d.tar_paths)

    @property
    def bad_shards(self) -> tuple[BadShard, ...]:
        return tuple(
            dataclasses.replace(bad, shard_id=self.offset(k) + bad.shard_id)
            for k, d in enumerate(self.datasets)
            for bad in d.bad_shards
        )

    def probabilities(self) -> list[float]:
        """Each source's share of the utterances drawn (NeMo's temperature reweighting)."""
        from components.mixture import probabilities

        return probabilities(self.weights, self.temperature)

    def input_cfg(self) -> list[dict[str, Any]]:
        """NeMo's ``train_ds.input_cfg``: a ``nemo_tarred`` entry a source, weighted and tagged.

        The keys are those ``read_nemo_manifest`` reads (``tarred_audio_filepaths``, plural;
        ``read_dataset_config``'s docstring spells it in the singular, which NeMo ignores).
        """
        return [
            {
                "type": "nemo_tarred",
                "manifest_filepath": d.manifest_filepath,
                "tarred_audio_filepaths": d.tarred_audio_filepaths,
                "weight": weight,
                "tags": {SOURCE_TAG: index},
            }
            for index, (d, weight) in enumerate(zip(self.datasets, self.weights, strict=True))
        ]

    def bucket_duration_bins(self) -> list[float] | None:
        """None: the bins in one source's metadata.yaml are not the mixture's."""
        return None

    def hours(self) -> float | None:
        """Hours of audio of all the sources (None when one has no record of them)."""
        hours = [d.hours() for d in self.datasets]
        return None if any(h is None for h in hours) else sum(h for h in hours if h is not None)

    def shard_hours(self, shard_ids: Iterable[int]) -> float:
        total = 0.0
        for shard_id in set(shard_ids):
            dataset, local = self._locate(shard_id)
            total += dataset.shard_hours([local])
        return total

    def tar_uri(self, shard_id: int) -> str:
        dataset, local = self._locate(shard_id)
        return dataset.tar_uri(local)


def open_mixture(
    sources: list[tuple[str, float]], local_dir: str, max_bad_shards: int = 0, temperature: float = 1.0
) -> MixedDataset:
    """Check every source of a mixture (:func:`open_tarred_dataset`) and describe the mixture.

    Args:
        sources: (tarred directory, weight) pairs, TARRED_DIR first.
        local_dir: local scratch; source ``k`` (from 1) keeps its manifest copies in
            ``local_dir/source_<k>``.
        max_bad_shards: damaged shards the whole mixture may do without.
        temperature: NeMo's ``reweight_temperature``.

    Raises:
        DataError: naming the source that cannot be used.
    """
    datasets = [
        open_tarred_dataset(uri, local_dir if k == 0 else str(Path(local_dir, f"source_{k}")), max_bad_shards)
        for k, (uri, _) in enumerate(sources)
    ]
    mixed = MixedDataset(tuple(datasets), tuple(float(w) for _, w in sources), temperature)
    if len(mixed.bad_shards) > max_bad_shards:
        listing = "; ".join(f"{b.uri}: {b.reason}" for b in mixed.bad_shards[:20])
        raise BadShardsError(
            f"{len(mixed.bad_shards)} damaged shard(s) in the mixture, --max-bad-shards allows "
            f"{max_bad_shards}: {listing}"
        )
    return mixed


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def _shard_ids(files: list[storage.FileInfo], pattern: re.Pattern[str]) -> list[int]:
    return sorted(int(m.group(1)) for f in files if (m := pattern.search(storage.basename(f.uri))))


def open_tarred_dataset(uri: str, local_dir: str, max_bad_shards: int = 0) -> TarredDataset:
    """Check a NeMo tarred directory and describe it for the Lhotse loader.

    Every shard is checked (:func:`check_shards`); damaged ones are left out of the
    specifiers when ``max_bad_shards`` allows, and listed in ``bad_shards``.

    Args:
        uri: directory with ``audio_<i>.tar``, ``sharded_manifests/manifest_<i>.json`` and
            (optionally) ``metadata.yaml``; local or gs://.
        local_dir: a local directory for copies of remote sharded manifests.
        max_bad_shards: damaged shards that may be left out; more is an error.

    Raises:
        DataError: no shards, tars and manifests that do not pair up as 0..N-1, a path NeMo
            or a shell would misread.
        BadShardsError: more damaged shards than ``max_bad_shards``, or all of them.
    """
    if not storage.is_gcs(uri):
        uri = os.path.abspath(uri)  # never a relative path that Lhotse could take for "pipe:…" or a URL
    check_nemo_path(uri, "tarred dataset")
    try:
        tar_files = {
            int(m.group(1)): f
            for f in storage.list_files(uri, suffix=".tar")
            if (m := _TAR.search(storage.basename(f.uri))) and storage.parent(f.uri) == uri.rstrip("/")
        }
        manifests = _shard_ids(
            storage.list_files(storage.join(uri, layout.SHARDED_MANIFESTS_DIR), ".json"), _SHARD_MANIFEST
        )
    except FileNotFoundError as err:
        raise DataError(f"{uri}: not a NeMo tarred dataset ({err})") from None
    tars = sorted(tar_files)
    if not tars:
        raise DataError(f"{uri}: no audio_<i>.tar shards (is this the output of asrflow write-shards?)")
    if tars != list(range(len(tars))):
        raise DataError(f"{uri}: shard ids must be 0..{len(tars) - 1}, found {tars[:10]}…")
    if manifests != tars:
        missing = sorted(set(tars) - set(manifests))
        where = storage.join(uri, layout.SHARDED_MANIFESTS_DIR)
        raise DataError(f"{where}: no manifest_<i>.json for shard(s) {missing[:10]}")
    n = len(tars)
    metadata_uri = storage.join(uri, layout.METADATA_NAME)
    metadata: dict[str, Any] = {}
    if storage.exists(metadata_uri):
        loaded = yaml.safe_load(storage.read_text(metadata_uri))
        if loaded is not None and not isinstance(loaded, dict):
            raise DataError(f"{metadata_uri}: expected a mapping")
        metadata = loaded or {}
    if storage.is_gcs(uri):
        local_dir = os.path.abspath(local_dir)
        check_nemo_path(local_dir, "local scratch directory (ASRFLOW_SCRATCH or the run directory)")
        manifest_root = local_dir
        for i in range(n):
            target = Path(local_dir, layout.sharded_manifest_name(i))
            if not target.exists():
                storage.download_file(storage.join(uri, layout.sharded_manifest_name(i)), target)
    else:
        manifest_root = uri
    manifest_paths = tuple(str(Path(manifest_root, layout.sharded_manifest_name(i))) for i in range(n))

    bad = check_shards([tar_files[i] for i in range(n)], manifest_paths, metadata)
    bad_ids = {b.shard_id for b in bad}
    if bad:
        listing = "; ".join(f"{b.uri}: {b.reason}" for b in bad[:20]) + ("; …" if len(bad) > 20 else "")
        if len(bad) == n:
            raise BadShardsError(f"{uri}: all {n} shard(s) are damaged: {listing}")
        if len(bad) > max_bad_shards:
            raise BadShardsError(
                f"{uri}: {len(bad)} of {n} shard(s) are damaged, --max-bad-shards allows {max_bad_shards}: "
                f"{listing}. Rewrite them (asrflow write-shards) or allow training without them "
                "with --max-bad-shards N"
            )
        for b in bad:
            log.warning(
                "shard %s is damaged (%s): left out of training (--max-bad-shards %d)",
                b.uri,
                b.reason,
                max_bad_shards,
            )
    ids = [i for i in range(n) if i not in bad_ids]
    brace = _brace_ids(ids)
    manifest_spec = str(Path(manifest_root, layout.sharded_manifest_name(brace)))
    manifests_meant = [manifest_paths[i] for i in ids]
    if storage.is_gcs(uri):
        tar_spec = pipe_command(storage.join(uri, layout.tar_pattern(brace)))
        tars_meant = [pipe_command(storage.join(uri, layout.tar_name(i))) for i in ids]
    else:
        tar_spec = str(Path(uri, layout.tar_pattern(brace)))
        tars_meant = [str(Path(uri, layout.tar_name(i))) for i in ids]
    _check_spec(manifest_spec, manifests_meant, ids, _NEMO_MANIFEST_ID, f"{uri} (sharded manifests)")
    _check_spec(tar_spec, tars_meant, ids, _NEMO_TAR_ID, f"{uri} (shards)")
    return TarredDataset(
        uri, n, manifest_spec, tar_spec, metadata, tuple(ids), tuple(tars_meant), tuple(bad), manifest_paths
    )


# --- checking shards before training -----------------------------------------------------------


def _read_range(info: storage.FileInfo, start: int, length: int) -> bytes:
    """``length`` bytes of a file from ``start`` (one ranged GET on gs://)."""
    if storage.is_gcs(info.uri):
        bucket, name = storage.split_gcs(info.uri)
        blob = storage.gcs_client().bucket(bucket).blob(name)
        return bytes(blob.download_as_bytes(start=start, end=start + length - 1, checksum=None))
    with open(info.uri, "rb") as stream:
        stream.seek(start)
        return stream.read(length)


def _count_lines(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(1 for line in stream if line.strip())


def check_shard(
    info: storage.FileInfo, lines: int, expected: int | None, one_member_a_line: bool
) -> str | None:
    """What is wrong with one shard, or None. Reads its first and last 1 KiB only.

    Args:
        info: the tar file and its size.
        lines: lines of its sharded manifest.
        expected: utterances metadata.yaml records for it (``asrflow.shard_utterances``), if any.
        one_member_a_line: each manifest line is one tar member (asrflow's layout), so the
            tar holds at least a header and a data block per line.
    """
    if expected is not None and lines != expected:
        return f"its sharded manifest has {lines} line(s), metadata.yaml says {expected}"
    size = info.size
    if size == 0:
        return "empty file"
    if size % TAR_BLOCK:
        return f"{size} bytes is not a whole number of {TAR_BLOCK}-byte tar blocks (truncated?)"
    if size < 2 * TAR_BLOCK:
        return f"{size} bytes is too small for a tar archive"
    if one_member_a_line and size < (2 * lines + 2) * TAR_BLOCK:
        return f"{size} bytes is too small for the {lines} utterance(s) its manifest lists (truncated?)"
    head = _read_range(info, 0, TAR_BLOCK)
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.EOFHeaderError:
        if lines:
            return f"an empty tar archive, but its manifest lists {lines} utterance(s)"
    except tarfile.HeaderError as err:
        return f"not a tar archive: the first 512-byte block is no tar header ({err})"
    tail = _read_range(info, size - 2 * TAR_BLOCK, 2 * TAR_BLOCK)
    if len(tail) != 2 * TAR_BLOCK or any(tail):
        return "does not end with the two zero blocks that close a tar archive (truncated or overwritten?)"
    return None


def check_shards(
    tar_files: list[storage.FileInfo], manifest_paths: tuple[str, ...], metadata: dict[str, Any]
) -> list[BadShard]:
    """Check every shard cheaply (sizes, first header, end blocks); the damaged ones, by id.

    Shards on gs:// are checked 16 at a time (two small ranged reads each).
    """
    section = metadata.get("asrflow") if isinstance(metadata.get("asrflow"), dict) else {}
    recorded = section.get("shard_utterances")
    if not (isinstance(recorded, list) and len(recorded) == len(tar_files)):
        recorded = None
    ours = bool(section)

    def one(i: int) -> BadShard | None:
        info = tar_files[i]
        try:
            lines = _count_lines(manifest_paths[i])
            reason = check_shard(info, lines, int(recorded[i]) if recorded else None, ours)
        except Exception as err:  # noqa: BLE001 - any failure to read it makes the shard damaged
            reason = f"cannot be read: {type(err).__name__}: {err}"
        return BadShard(i, info.uri, reason) if reason else None

    remote = any(storage.is_gcs(f.uri) for f in tar_files)
    if remote and len(tar_files) > 1:
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            found = list(pool.map(one, range(len(tar_files))))
    else:
        found = [one(i) for i in range(len(tar_files))]
    return [b for b in found if b is not None]


# --- shards skipped during training ------------------------------------------------------------

_SKIPPED_SHARD = "Skipping tar file due to read errors"  # nemo_adapters.py:583
_SKIPPED_MEMBER = "Skipped corrupted file"  # nemo_adapters.py:544
NEMO_LOGGER = "nemo_logger"  # nemo/utils/nemo_logging.py: the logger behind nemo.utils.logging


def _tar_path_in(message: str) -> str | None:
    """The ``tar_path`` NeMo's f-string ``{tar_path=}`` put into a message (a Python repr)."""
    _, found, rest = message.partition("tar_path=")
    if not found:
        return None
    rest = rest.rstrip()
    for end in (len(rest), len(rest) - 1):  # "…tar_path='x'" or "…tar_path='x'."
        try:
            value = ast.literal_eval(rest[:end])
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str):
            return value
    return None


class ShardHealth(logging.Handler):
    """Counts the shards and utterances NeMo's tarred reader skips, and stops training past a limit.

    NeMo's ``LazyNeMoTarredIterator.__iter__`` catches ``tarfile.ReadError`` for a whole
    shard, logs "Skipping tar file due to read errors … tar_path=…" and goes on with the next
    shard (``nemo_adapters.py:581``); an audio member soundfile cannot read is logged as
    "Skipped corrupted file" (``:544``). Neither raises, so this handler on NeMo's logger is
    where a skip can be seen. It runs in whichever process reads the data (dataloader
    workers are forked with it installed) and appends each skip to ``record_file``, which
    the training process reads back for the card and its checkpoints.

    A skipped shard is fatal (:class:`BadShardsError`, raised from the reader) once the
    shards left out before training, in earlier attempts and now together exceed
    ``max_bad_shards``, or once every shard in use has failed.
    """

    def __init__(
        self, dataset: TarredDataset, max_bad_shards: int, record_file: str | os.PathLike[str]
    ) -> None:
        super().__init__(level=logging.WARNING)
        self.dataset = dataset
        self.max_bad_shards = max_bad_shards
        self.by_path = dict(zip(dataset.tar_paths, dataset.shard_ids, strict=True))
        self.before = {b.shard_id: b for b in dataset.bad_shards}
        self.previous: dict[int, BadShard] = {}  # found by an earlier attempt (from the checkpoint)
        self.record_file = Path(record_file)
        self.record_file.parent.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text("")
        self._installed = False

    # --- the hook ------------------------------------------------------------------------

    def install(self) -> ShardHealth:
        logging.getLogger(NEMO_LOGGER).addHandler(self)
        self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            logging.getLogger(NEMO_LOGGER).removeHandler(self)
            self._installed = False

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith(_SKIPPED_SHARD):
            self._shard_skipped(message)
        elif message.startswith(_SKIPPED_MEMBER):
            path = _tar_path_in(message)
            member = message[len(_SKIPPED_MEMBER) :].split("'")[1] if "'" in message else "?"
            self._append({"kind": "utterance", "shard_id": self.by_path.get(path or ""), "member": member})

    def _shard_skipped(self, message: str) -> None:
        path = _tar_path_in(message) or "?"
        shard_id = self.by_path.get(path, -1)
        uri = self.dataset.tar_uri(shard_id) if shard_id >= 0 else path
        error = sys.exc_info()[1]  # NeMo logs from inside its `except tarfile.ReadError`
        reason = (
            f"read error during training ({type(error).__name__}: {error})"
            if error
            else "read error during training"
        )
        self._append({"kind": "shard", "shard_id": shard_id, "uri": uri, "reason": reason})
        during = self.found_during()
        in_use = set(self.dataset.shard_ids)
        if in_use <= set(during):
            self._fail(
                f"{self.dataset.uri}: every shard in use failed to read during training; "
                f"last: {uri}: {reason}"
            )
        total = set(self.before) | set(during)
        if len(total) > self.max_bad_shards:
            others = [f"{b.uri}: {b.reason}" for b in self.bad_shards() if b.shard_id != shard_id]
            self._fail(
                f"shard {uri} cannot be read ({reason}): {len(total)} damaged shard(s), "
                f"--max-bad-shards allows {self.max_bad_shards}"
                + (f" (the others: {'; '.join(others[:20])})" if others else "")
                + ". Rewrite it (asrflow write-shards) or allow training without it with --max-bad-shards N"
            )
        log.warning(
            "shard %s skipped: %s (%d of --max-bad-shards %d)", uri, reason, len(total), self.max_bad_shards
        )

    def _fail(self, message: str) -> None:
        self._append({"kind": "fatal", "message": message})
        raise BadShardsError(message)

    def fatal(self) -> str | None:
        """The message of the skip that stopped training, if one did (in any process)."""
        for item in self._records():
            if item["kind"] == "fatal":
                return str(item["message"])
        return None

    def close(self) -> None:
        """Remove the hook and the record file."""
        self.uninstall()
        self.record_file.unlink(missing_ok=True)

    def _append(self, item: dict[str, Any]) -> None:
        line = json.dumps(item, sort_keys=True) + "\n"
        with open(self.record_file, "a", encoding="utf-8") as out:  # one small O_APPEND write a line
            out.write(line)

    # --- what was skipped ----------------------------------------------------------------

    def _records(self) -> list[dict[str, Any]]:
        try:
            text = self.record_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def found_during(self) -> dict[int, BadShard]:
        """Shards skipped during training, in this attempt and the earlier ones."""
        found = dict(self.previous)
        for item in self._records():
            if item["kind"] == "shard" and item["shard_id"] not in found:
                found[item["shard_id"]] = BadShard(
                    item["shard_id"], item["uri"], item["reason"], "during training"
                )
        return found

    def bad_shards(self) -> list[BadShard]:
        """Every shard left out or skipped, by id."""
        merged = {**self.found_during(), **self.before}
        return [merged[i] for i in sorted(merged)]

    def skipped_utterances(self) -> int:
        """Distinct audio members NeMo could not decode and skipped (this attempt)."""
        return len({(i.get("shard_id"), i["member"]) for i in self._records() if i["kind"] == "utterance"})

    def restore(self, items: list[dict[str, Any]]) -> None:
        """Shards an earlier attempt skipped (from its checkpoint)."""
        for item in items:
            self.previous[int(item["shard_id"])] = BadShard(**item)

    def summary(self) -> dict[str, Any]:
        """The card's account: shards left out or skipped, their hours, utterances skipped."""
        bad = self.bad_shards()
        return {
            "bad_shards": [b.as_dict() for b in bad],
            "bad_shard_hours": round(self.dataset.shard_hours(b.shard_id for b in bad if b.shard_id >= 0), 4),
            "skipped_utterances": self.skipped_utterances(),
        }


def prepare_validation_manifest(uri: str, local_dir: str) -> tuple[str, int, float]:
    """A local copy of a validation manifest that NeMo can read as it is.

    Relative ``audio_filepath`` values are resolved against the manifest's directory;
    audio on gs:// is copied to ``local_dir``; texts get the shared normalisation (what the
    model is trained and scored on). Entries whose text normalises to nothing are dropped
    with a count in the log.

    Returns:
        (local manifest path, utterances, hours)

    Raises:
        DataError: a bad line (named by file and line) or missing audio file.
    """
    local_dir = os.path.abspath(local_dir)
    check_nemo_path(local_dir, "local work directory (the run directory, or ASRFLOW_SCRATCH)")
    base = storage.parent(uri)
    audio_dir = Path(local_dir, "audio")
    entries = []
    empty = 0
    try:
        items = manifest.read_manifest(uri)
    except manifest.ManifestError as err:
        raise DataError(str(err)) from None
    except FileNotFoundError:
        raise DataError(f"validation manifest not found: {uri}") from None
    for line_number, entry in enumerate(items, start=1):
        path = entry["audio_filepath"]
        if not storage.is_gcs(path) and not Path(path).is_absolute():
            path = storage.join(base, path)
        if storage.is_gcs(path):
            local = audio_dir / f"{line_number:07d}_{storage.basename(path)}"
            if not local.exists():
                storage.download_file(path, local)
            path = str(local)
        elif not Path(path).is_file():
            raise DataError(f"{uri}:{line_number}: audio file not found: {path}")
        text = manifest.normalize_text(entry["text"])
        if not text:
            empty += 1
            continue
        entries.append({**entry, "audio_filepath": str(Path(path).resolve()), "text": text})
    if not entries:
        raise DataError(f"{uri}: no usable utterances")
    if empty:
        log.warning(
            "validation manifest %s: %d utterance(s) with no text after normalisation left out", uri, empty
        )
    out = str(Path(local_dir, "validation_manifest.json"))
    manifest.write_manifest(out, entries)
    return out, len(entries), sum(float(e["duration"]) for e in entries) / 3600


def data_seed(base_seed: int, resume_step: int) -> int:
    """The data-order seed for a run attempt that starts at ``resume_step``.

    A resumed attempt gets a different seed from the attempt it continues, so it does not
    replay the batches seen before the preemption; the same attempt gets the same seed.
    """
    digest = hashlib.sha256(f"asrflow-data:{base_seed}:{resume_step}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**30
