"""Weighted mixtures of tarred datasets: the ``DIR=WEIGHT`` syntax, its parsing and the shares.

``asrflow train TARRED_DIR --mix OTHER=WEIGHT …`` trains on several tarred datasets at once,
and ``asrflow estimate-buckets`` takes the same options to estimate the bins over the same
mixture. Training hands the sources to NeMo's Lhotse dataloading as an ``input_cfg`` list of
``nemo_tarred`` entries with a ``weight`` each (``nemo/collections/common/data/lhotse/cutset.py``,
``parse_and_combine_datasets``), which draws each next *utterance* from source ``i`` with
probability ``w_i ** T / sum_j w_j ** T`` (``temperature_reweighting``; ``T`` is
``reweight_temperature``, 1 by default): weights are shares of utterances, not of hours.

Standard library only: the KFP components and the data image import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence

SEPARATOR = "="
MIX_FLAG = "--mix"
WEIGHT_FLAG = "--weight"
TEMPERATURE_FLAG = "--mix-temperature"

MIX_HELP = (
    "Another tarred dataset to mix in, as DIR=WEIGHT (repeat the option for more). Each "
    "next utterance comes from a source with probability proportional to its weight "
    "(NeMo's Lhotse input_cfg with nemo_tarred entries): weights are shares of utterances, "
    "not of hours."
)
WEIGHT_HELP = "TARRED_DIR's weight in a mixture with --mix (a share of utterances)."
TEMPERATURE_HELP = (
    "NeMo's reweight_temperature T for a mixture: a source is drawn with probability "
    "w**T / sum(w**T); 1 keeps the weights, 0 makes the sources equal, below 1 favours the "
    "light ones."
)


class MixtureError(ValueError):
    """A mixture that cannot be used; the message names the item or flag."""


@dataclasses.dataclass(frozen=True)
class WeightedSource:
    """One tarred dataset of a mixture and its weight."""

    uri: str
    weight: float

    def item(self) -> str:
        """``DIR=WEIGHT``, as :func:`parse_source` reads it back (the weight exactly)."""
        return f"{self.uri}{SEPARATOR}{self.weight!r}"


def check_weight(weight: float, what: str) -> float:
    """``weight`` as a float, or a MixtureError naming ``what``: it must be finite and above 0."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise MixtureError(f"{what}: the weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise MixtureError(f"{what}: the weight must be a finite number above 0, got {weight!r}")
    return float(weight)


def parse_source(item: str, flag: str = MIX_FLAG) -> WeightedSource:
    """A ``DIR=WEIGHT`` item (split at the last ``=``: a directory may hold one).

    Raises:
        MixtureError: naming the item: no ``=``, no directory, a weight that is not a
            number, or not above 0.
    """
    where = f"{flag} {item!r}"
    uri, separator, text = item.rpartition(SEPARATOR)
    if not separator:
        raise MixtureError(f"{where}: give DIR{SEPARATOR}WEIGHT, e.g. gs://bucket/tarred{SEPARATOR}2")
    if not uri.strip():
        raise MixtureError(f"{where}: no directory before {SEPARATOR!r} (give DIR{SEPARATOR}WEIGHT)")
    try:
        weight = float(text)
    except ValueError:
        raise MixtureError(
            f"{where}: the weight {text!r} is not a number (give DIR{SEPARATOR}WEIGHT)"
        ) from None
    return WeightedSource(uri.rstrip("/") or uri, check_weight(weight, where))


def mixture_sources(
    first: str,
    weight: float,
    mix: Sequence[str],
    flag: str = MIX_FLAG,
    resolve_dir: Callable[[str], str] = str,
) -> list[WeightedSource]:
    """The sources of a run: ``first`` with ``weight``, then each ``DIR=WEIGHT`` of ``mix``.

    ``resolve_dir`` turns each DIR of ``mix`` into the directory to read (e.g. a write-shards
    card.json into its directory); ``first`` is taken as given.

    Raises:
        MixtureError: a bad item or weight, or a directory given twice.
    """
    sources = [WeightedSource(first.rstrip("/") or first, check_weight(weight, WEIGHT_FLAG))]
    for item in mix:
        source = parse_source(item, flag)
        sources.append(WeightedSource(resolve_dir(source.uri), source.weight))
    seen: set[str] = set()
    for source in sources:
        if source.uri in seen:
            raise MixtureError(f"{flag}: {source.uri} is in the mixture twice; give each dataset once")
        seen.add(source.uri)
    return sources


def check_temperature(temperature: float) -> float:
    """The reweighting temperature, or a MixtureError: a finite number, 0 or more."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise MixtureError(f"{TEMPERATURE_FLAG} must be a number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise MixtureError(f"{TEMPERATURE_FLAG} must be a finite number, 0 or more, got {temperature!r}")
    return float(temperature)


def probabilities(weights: Sequence[float], temperature: float = 1.0) -> list[float]:
    """The share of utterances each source gets: NeMo's ``temperature_reweighting``.

    ``w_i ** T / sum_j w_j ** T`` (``nemo/collections/common/data/lhotse/cutset.py``); a test
    checks it against NeMo's function.
    """
    powered = [float(w) ** temperature for w in weights]
    total = sum(powered)
    return [p / total for p in powered]


def mixture_key(sources: Sequence[WeightedSource], temperature: float) -> str:
    """A short digest of the mixture: the same sources, weights and temperature, the same key."""
    text = "\n".join(source.item() for source in sources) + f"\nT={float(temperature)!r}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
