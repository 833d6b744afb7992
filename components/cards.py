"""Cards: the small JSON summaries every step writes and prints.

A step writes its card as ``card.json`` in its output directory and prints the same JSON as
the last line of stdout, so a shell script, a notebook and the KFP wrapper read one thing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from components import storage

CARD_NAME = "card.json"


def card_uri(out_dir: str) -> str:
    return storage.join(out_dir, CARD_NAME)


def write_card(out_dir: str, card: dict[str, Any], echo: bool = True) -> str:
    """Write ``card.json`` atomically under ``out_dir``; print it as one line when ``echo``."""
    text = json.dumps(card, sort_keys=True, ensure_ascii=False)
    uri = card_uri(out_dir)
    storage.write_text(uri, json.dumps(card, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    if echo:
        sys.stdout.flush()
        print(text, flush=True)
    return uri


def read_card(uri: str) -> dict[str, Any]:
    """Read a card from a ``card.json`` URI or from the directory that holds one."""
    if not uri.endswith(".json"):
        uri = card_uri(uri)
    return json.loads(storage.read_text(uri))
