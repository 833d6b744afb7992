"""This machine's pip configuration, as the read-only mounts an image build needs.

The images install with uv, which does not read pip.conf. This turns what pip is configured
with here (``pip config list`` and the ``PIP_*`` variables: the index URL, find-links, the CA
bundle) into a directory for ``podman build --volume DIR:/mnt:ro`` (``uv.toml`` and hard-linked
copies of the local find-links directories; the Dockerfiles pass ``--config-file`` to uv when
the build argument ``UV_BUILD_CONFIG=/mnt/uv.toml`` is given) and prints one ``--volume``
argument a line: that directory, and the CA bundle over the image's own. Both targets exist
in every base image, so nothing is left behind: a volume at a path the image lacks leaves an
empty mount point in the layer (tests/images checks the layers).

pip's extra indexes are left out: requirements.lock was made from the index and the
find-links (``make lock``), and uv takes all of a package's files from the first index that
has its version, so a partial mirror there (a ``file://`` index with only the pure-Python
wheel of soundfile, say) would win over the index's platform wheel.

    python images/local/installer_config.py OUT_DIR [PIP...]   (PIP: default ``python -m pip``)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

KEYS = ("index-url", "find-links", "cert")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MOUNT = "/mnt"
"""Where the build sees OUT_DIR: an empty directory in Debian, Ubuntu and python images."""


def pip_settings(pip: list[str]) -> dict[str, str]:
    """``key -> value`` for :data:`KEYS` from pip's config files, then its ``PIP_*`` variables."""
    listing = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, check=True).stdout
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, value = line.partition("=")
        section, _, key = name.partition(".")
        if sep and section in ("global", "install") and key in KEYS:
            settings[key] = value.strip().strip("'\"")
    for key in KEYS:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            settings[key] = env
    return settings


def local_path(location: str) -> str | None:
    """The directory behind a find-links or index location, when it is on this machine."""
    if location.startswith("file://"):
        return location.removeprefix("file://")
    return location if location.startswith("/") else None


def link_tree(source: Path, target: Path) -> None:
    """Copy a directory by hard links (a plain copy across filesystems)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def find_links(settings: dict[str, str], out_dir: Path) -> list[str]:
    """find-links as the build sees them: local directories copied under OUT_DIR, URLs as they are."""
    locations = []
    for index, location in enumerate(settings.get("find-links", "").split()):
        path = local_path(location)
        if path is None:
            locations.append(location)
            continue
        if not Path(path).is_dir():
            raise SystemExit(f"pip's find-links names {location}, which is no directory here")
        link_tree(Path(path), out_dir / f"find-links-{index}")
        locations.append(f"{MOUNT}/find-links-{index}")
    return locations


def uv_toml(index_url: str | None, links: list[str]) -> str:
    """A uv.toml with pip's index and find-links; TLS through the system CA bundle."""
    lines = ["# made by images/local/installer_config.py for one build: mounted, never copied"]
    lines.append("native-tls = true")
    if index_url:
        lines.append(f'index-url = "{index_url}"')
    if links:
        lines.append("find-links = [" + ", ".join(f'"{location}"' for location in links) + "]")
    return "\n".join(lines) + "\n"


def write_config(settings: dict[str, str], out_dir: Path) -> list[str]:
    """Fill OUT_DIR; return the ``SRC:DST:ro`` volumes of the build."""
    index_url = settings.get("index-url")
    if index_url and local_path(index_url):
        raise SystemExit(f"pip's index-url {index_url} is a local index: images/local cannot mount one")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "uv.toml").write_text(uv_toml(index_url, find_links(settings, out_dir)))
    volumes = [f"{out_dir}:{MOUNT}:ro"]
    if settings.get("cert"):
        volumes.append(f"{settings['cert']}:{IMAGE_CA_BUNDLE}:ro")
    return volumes


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    out_dir = Path(argv[0])
    pip = argv[1:] or [sys.executable, "-m", "pip"]
    for volume in write_config(pip_settings(pip), out_dir):
        print(shlex.quote(f"--volume={volume}"))


if __name__ == "__main__":
    main(sys.argv[1:])
