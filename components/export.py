"""Exporting an INPUT as an evaluation set: FLAC files plus a NeMo manifest, with rejects counted."""

from __future__ import annotations

import json
import logging
import time

from components import audio as checks
from components import storage
from components.items import Bad
from components.layout import AUDIO_DIR, DOWNLOAD_MANIFEST_NAME, REJECTS_NAME
from components.manifest import DEFAULT_MAX_REJECT_FRACTION, Rejects, manifest_line
from components.member_names import member_stem
from components.progress import Progress
from components.sources import count_rows, iter_items, open_source

log = logging.getLogger("asrflow.export")

EXPORT_STEP = "export-manifest"


def export_manifest(
    input_: str,
    out_dir: str,
    split: str | None = None,
    rules: checks.Rules | None = None,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
) -> str:
    """Write an INPUT's utterances as FLAC files plus a NeMo manifest; return the manifest URI.

    The manifest (``<out_dir>/manifest.json``) has ``audio_filepath`` relative to its own
    directory (``audio/<id>.flac``), ``duration`` measured from the audio, the normalised
    ``text``, ``source_id`` and any extra keys of a manifest input. Items are checked as
    write-shards checks them (without a duration filter unless ``rules`` sets one); rejects
    go to ``rejects.jsonl``. A finished export (``_SUCCESS``) is returned as it is.

    Args:
        input_: a parquet directory, a download (its directory or ``card.json``) or a NeMo
            manifest (see :func:`components.sources.open_source`).
        out_dir: where the manifest, audio and rejects go (local or gs://).
        split: the split to read when the input directory holds several.
        rules: the checks (default: no duration filter).
        max_reject_fraction: fail when more than this fraction of the items is faulty.

    Raises:
        RejectThresholdExceeded: more than ``max_reject_fraction`` of the items were rejected.
    """
    manifest_uri = storage.join(out_dir, DOWNLOAD_MANIFEST_NAME)
    if storage.is_complete(out_dir):
        return manifest_uri
    rules = rules or checks.Rules(min_duration=None, max_duration=None)
    source = open_source(input_, split=split)
    rejects, filtered = Rejects(), Rejects()
    seen: set[str] = set()
    accepted = 0
    progress = Progress(f"{EXPORT_STEP} utterances", count_rows(source))
    with storage.atomic_writer(manifest_uri) as manifest:
        for item in iter_items(source):
            progress.update()
            if isinstance(item, Bad):
                rejects.add(item.id, item.source, item.reason, item.detail)
                continue
            result = checks.check(item.audio, item.text, item.duration, rules)
            if isinstance(result, checks.Refusal):
                target = filtered if result.reason in checks.FILTER_REASONS else rejects
                target.add(item.id, item.source, result.reason, result.detail)
                continue
            stem = member_stem(item.id)
            if stem in seen:
                rejects.add(item.id, item.source, checks.DUPLICATE_ID, f"an earlier item is named {stem}")
                continue
            seen.add(stem)
            data = result.audio if result.extension == "flac" else checks.to_flac(result.audio)
            relative = f"{AUDIO_DIR}/{stem}.flac"
            storage.write_bytes(storage.join(out_dir, relative), data)
            entry = {"audio_filepath": relative, "duration": result.duration, "text": result.text}
            entry.update({"source_id": item.id, **item.extra})
            manifest.write(manifest_line(entry).encode("utf-8"))
            accepted += 1
    progress.finish()
    everything = Rejects()
    everything.extend(rejects)
    everything.extend(filtered)
    everything.write(storage.join(out_dir, REJECTS_NAME))
    rejects.check(accepted + len(filtered), max_reject_fraction, EXPORT_STEP)
    storage.mark_complete(out_dir, json.dumps({"utterances": accepted, "time": int(time.time())}) + "\n")
    log.info("exported %d utterances to %s (%d rejected)", accepted, manifest_uri, len(everything))
    return manifest_uri
