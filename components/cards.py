"""Cards: the small JSON summaries every step writes and prints.

A step writes its card as ``card.json`` in its output directory and prints the same JSON as
the last line of stdout, so a shell script, a notebook and the KFP wrapper read one thing.

Each step declares its card once, as a dataclass deriving from :class:`Card`: ``step`` names
the step, ``out_dir`` is the step's output directory (the one key every card has for it), and
the other fields are the figures that step reports. The JSON is the dataclass's fields.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, ClassVar, TypeVar

from components import storage
from components.layout import CARD_NAME

CardT = TypeVar("CardT", bound="Card")


class CardError(ValueError):
    """A card that is not the card a reader expects; the message names the file and field."""


@dataclasses.dataclass
class Card:
    """What every card holds.

    Attributes:
        out_dir: the step's output directory (local or gs://), where ``card.json`` lies.
    """

    STEP: ClassVar[str] = ""
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this card: its fields plus ``step``."""
        return {"step": self.STEP, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls: type[CardT], data: dict[str, Any], where: str = "card") -> CardT:
        """The card in ``data``; a card of another step or without a required field is an error."""
        if data.get("step") != cls.STEP:
            raise CardError(f"{where}: a {data.get('step') or 'unknown'} card, expected a {cls.STEP} card")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        missing = [
            name
            for name, field in fields.items()
            if name not in data
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise CardError(f"{where}: the {cls.STEP} card has no {', '.join(missing)}")
        return cls(**{name: value for name, value in data.items() if name in fields})

    @classmethod
    def read(cls: type[CardT], uri: str) -> CardT:
        """Read this step's card from a ``card.json`` URI or the directory that holds one."""
        uri = card_uri(uri) if not uri.endswith(".json") else uri
        return cls.from_dict(read_card(uri), where=uri)

    def write(self, echo: bool = True) -> str:
        """Write ``card.json`` in ``out_dir``; print it as one line when ``echo``."""
        return write_card(self.out_dir, self.to_dict(), echo=echo)


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
    """Read a card (as JSON) from a ``card.json`` URI or from the directory that holds one."""
    if not uri.endswith(".json"):
        uri = card_uri(uri)
    return json.loads(storage.read_text(uri))
