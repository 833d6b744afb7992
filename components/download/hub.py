"""The Hugging Face hub, through huggingface_hub: a revision's commit, card and files; one file's bytes.

The token comes from the caller (``HF_TOKEN`` by default) and is never logged.
"""

from __future__ import annotations

import os
import re
from typing import Any

from components.download.checksums import hash_uri
from components.download.data_files import card_configs
from components.download.errors import DownloadError
from components.download.files import SourceFile

HF_DATASETS = "hf://datasets/"


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hf://datasets/OWNER/NAME[@REVISION]`` -> (``OWNER/NAME``, REVISION or None)."""
    rest = source[len(HF_DATASETS) :].strip("/")
    repo_id, _, revision = rest.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise DownloadError(f"not a hub dataset: {source!r} (expected hf://datasets/OWNER/NAME)")
    return repo_id, revision or None


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` (a hub mirror), read when used rather than when huggingface_hub loads."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the hub does not answer (its HTTP client's errors)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled too
    for module_name in ("httpx2", "httpx"):  # whichever client this huggingface_hub uses
        try:
            found.append(importlib.import_module(module_name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def resolve_hub(
    repo_id: str, revision: str | None, token: str | None
) -> tuple[str, list[dict[str, Any]] | None, dict[str, SourceFile]]:
    """Ask the hub for the commit SHA of ``revision``, the card's configs and every file.

    Returns:
        (commit SHA, ``configs`` of the dataset card or None, files by path in the repo).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=hub_endpoint(), token=token)
    try:
        info = api.dataset_info(repo_id, revision=revision)
        if not info.sha:
            raise DownloadError(f"the hub gave no commit for {repo_id}@{revision or 'main'}")
        tree = list(api.list_repo_tree(repo_id, repo_type="dataset", revision=info.sha, recursive=True))
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = " (is HF_TOKEN set to a token that may read it?)" if status in (401, 403) else ""
        first_line = str(err).strip().splitlines()[0]
        raise DownloadError(f"hub dataset {repo_id}@{revision or 'main'}: {first_line}{hint}") from err
    except hub_network_errors() as err:
        endpoint = hub_endpoint() or constants.ENDPOINT
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DownloadError(
            f"cannot reach the Hugging Face hub at {endpoint} for dataset {repo_id}: {reason}; check "
            "HF_ENDPOINT (unset it for huggingface.co), the network or proxy, and HF_TOKEN"
        ) from err
    files = {}
    for entry in tree:
        if isinstance(entry, RepoFile):
            if entry.lfs is not None:
                files[entry.path] = SourceFile(entry.path, entry.path, entry.size, "sha256", entry.lfs.sha256)
            else:
                files[entry.path] = SourceFile(entry.path, entry.path, entry.size, "git-sha1", entry.blob_id)
    return info.sha, card_configs(info.card_data), files


def fetch_hub_file(repo_id: str, revision: str, file: SourceFile, staging_dir: str, token: str | None) -> str:
    """Download one file of a hub dataset into ``staging_dir`` (where a rerun resumes a partial
    download) and check its size and checksum; returns its local path."""
    from huggingface_hub import hf_hub_download

    staged = hf_hub_download(
        repo_id,
        file.path,
        repo_type="dataset",
        revision=revision,
        local_dir=staging_dir,
        token=token,
        endpoint=hub_endpoint(),
    )
    if os.path.getsize(staged) != file.size or hash_uri(staged, file.algorithm, file.size) != file.digest:
        os.unlink(staged)
        raise DownloadError(f"{repo_id}/{file.path}: the downloaded bytes fail their {file.algorithm} check")
    return staged
