"""Interpolated modified Kneser-Ney n-gram estimation, as KenLM's ``lmplz`` does it.

The model is Chen & Goodman's interpolated Kneser-Ney with three discounts per order
("modified"), estimated the way KenLM's ``lmplz`` estimates it (Heafield et al. 2013):

- adjusted counts: the raw count for the highest order and for n-grams that start with
  ``<s>``; for the others the number of distinct words seen to their left;
- discounts per order from the counts of adjusted counts ``t1..t4``:
  ``Y = t1 / (t1 + 2 t2)``, ``D_k = k - (k + 1) Y t_{k+1} / t_k`` (``D_3`` for 3 and more);
  when the text is too small for that (a ``t_k`` is 0, or a ``D_k`` falls outside
  ``(0, k]``) the order takes lmplz's ``--discount_fallback`` values 0.5, 1, 1.5;
- ``p(w | h) = (a(h w) - D(a(h w))) / sum_x a(h x) + gamma(h) p(w | h')``, with
  ``gamma(h) = sum_x D(a(h x)) / sum_x a(h x)`` and ``h'`` the context less its first word;
  unigrams interpolate with the uniform distribution over the vocabulary.

The vocabulary is closed: every token of the tokenizer and ``</s>``. Tokens the text never
shows keep the uniform share, so every context's distribution sums to one over exactly the
labels an ASR decoder scores (no ``<unk>`` entry is needed). The result is written as a
back-off model whose back-off weights are the ``gamma`` above, which reproduces the
interpolated probabilities exactly (:mod:`components.lm.arpa`).

Why our own and not a library: KenLM's estimator cannot be installed here (the ``kenlm``
package on PyPI builds only the query module); ``kaldingram`` 0.1.2 (Kaldi's make_kn_lm.py)
is back-off, not interpolated, Kneser-Ney with one discount per order and no unigram
smoothing (``<s>`` gets 1e-99, unseen tokens nothing); ``arpabo`` 0.3.0's "Kneser-Ney" is
absolute discounting without interpolation (back-off weights fixed at 1) and writes
space-separated ARPA with a comment before ``\\data\\`` that NeMo's reader rejects;
NLTK's ``KneserNeyInterpolated`` has one fixed discount, no smoothing of unseen words,
scans every n-gram per query and writes no ARPA.

The counting is vectorised with numpy: an n-gram of order ``n`` is the index of its
first ``n - 1`` symbols in order ``n - 1`` times the symbol radix plus its last symbol, one
int64 a position, so each order is one ``np.unique`` over the text. Sorted keys make the
model independent of the order of the sentences and the output byte-identical for the
same text.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

SMOOTHING = "interpolated modified Kneser-Ney"
"""What :func:`estimate` makes, as the card names it."""
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
"""KenLM lmplz's ``--discount_fallback`` defaults, for text too small to estimate them."""


@dataclasses.dataclass(frozen=True)
class Sentences:
    """Token sequences, flat: ``tokens`` of all sentences one after another, and ``lengths``."""

    tokens: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, sentences: Iterable[Sequence[int]]) -> Sentences:
        """Pack a list of token-id lists."""
        listed = [list(sentence) for sentence in sentences]
        tokens = np.fromiter((token for sentence in listed for token in sentence), dtype=np.int64)
        return cls(tokens, np.array([len(sentence) for sentence in listed], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


@dataclasses.dataclass(frozen=True)
class Discounts:
    """The discounts of one order for adjusted counts 1, 2 and 3 or more."""

    d1: float
    d2: float
    d3: float
    fallback: bool = False
    """True when the counts could not give them and lmplz's fallback values are used."""

    def of(self, counts: np.ndarray) -> np.ndarray:
        """The discount of each adjusted count (0 for a count of 0)."""
        table = np.array([0.0, self.d1, self.d2, self.d3])
        return table[np.minimum(counts, 3)]

    def as_list(self) -> list[float]:
        return [self.d1, self.d2, self.d3]


def estimate_discounts(adjusted: np.ndarray) -> Discounts:
    """Chen & Goodman's discounts from one order's adjusted counts (equation 26)."""
    t = [int(np.count_nonzero(adjusted == k)) for k in range(5)]
    if t[1] == 0 or t[2] == 0 or t[3] == 0:
        return Discounts(*FALLBACK_DISCOUNTS, fallback=True)
    y = t[1] / (t[1] + 2 * t[2])
    values = [k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3)]
    if any(not 0.0 < value <= k for k, value in zip((1, 2, 3), values, strict=True)):
        return Discounts(*FALLBACK_DISCOUNTS, fallback=True)
    return Discounts(*values)


@dataclasses.dataclass(frozen=True)
class Order:
    """The n-grams of one order, sorted.

    Attributes:
        keys: per n-gram, the index of its first ``n - 1`` symbols in the order below times
            the radix plus its last symbol (for unigrams: the symbol). Ascending, so sorting
            by key sorts the n-grams lexicographically.
        log10_prob: the interpolated ``log10 p(last | first n - 1)``; ``-inf`` for ``<s>``.
        log10_backoff: ``log10 gamma`` of the n-gram as a context, NaN where it is none.
    """

    keys: np.ndarray
    log10_prob: np.ndarray
    log10_backoff: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


@dataclasses.dataclass(frozen=True)
class NgramModel:
    """An estimated model: ``vocab_size`` token ids, then ``<s>`` and ``</s>``."""

    vocab_size: int
    orders: list[Order]
    discounts: list[Discounts]

    @property
    def order(self) -> int:
        return len(self.orders)

    @property
    def radix(self) -> int:
        return self.vocab_size + 2

    @property
    def bos(self) -> int:
        return self.vocab_size

    @property
    def eos(self) -> int:
        return self.vocab_size + 1

    def ngram_counts(self) -> list[int]:
        return [len(order) for order in self.orders]

    def lookup(self, n: int, prefix: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """Index in order ``n`` of (n-gram ``prefix`` of order ``n - 1``) + ``symbols``; -1 if absent.

        ``prefix`` holds indices into order ``n - 1`` (-1 for absent); for ``n == 1`` it is ignored.
        """
        if n == 1:
            return symbols.astype(np.int64)
        keys = self.orders[n - 1].keys
        wanted = prefix * self.radix + symbols
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where((prefix >= 0) & (keys[at] == wanted), at, -1)

    def log10_probs(self, sentences: Sentences) -> np.ndarray:
        """``log10 p`` of every token and of each sentence's ``</s>``, in order, by back-off.

        This is what a reader of the ARPA file computes: the longest n-gram present, times
        the back-off weights of the longer contexts that are present.
        """
        padded = pad(sentences, self.vocab_size)
        targets = np.flatnonzero(padded.position > 0)
        history = padded.position[targets]
        index = [np.full(len(padded.stream), -1, dtype=np.int64)]
        for n in range(1, self.order + 1):
            starts = np.flatnonzero(padded.remaining >= n)
            found = np.full(len(padded.stream), -1, dtype=np.int64)
            found[starts] = self.lookup(n, index[-1][starts], padded.stream[starts + n - 1])
            index.append(found)
        result = np.zeros(len(targets))
        backoff = np.zeros(len(targets))
        done = np.zeros(len(targets), dtype=bool)
        for n in range(self.order, 0, -1):
            usable = (history >= n - 1) & ~done
            start = np.where(usable, targets - n + 1, 0)
            ngram = np.where(usable, index[n][start], -1)
            hit = ngram >= 0
            result[hit] = self.orders[n - 1].log10_prob[ngram[hit]] + backoff[hit]
            done |= hit
            if n > 1:
                context = np.where(usable & ~hit, index[n - 1][start], -1)
                has = context >= 0
                weights = self.orders[n - 2].log10_backoff[context[has]]
                backoff[has] += np.where(np.isnan(weights), 0.0, weights)
        return result

    def perplexity(self, sentences: Sentences) -> float:
        """Perplexity per token, ``</s>`` counted as a token (as SRILM's and KenLM's ``ppl``)."""
        logs = self.log10_probs(sentences)
        return float(10.0 ** (-logs.sum() / len(logs))) if len(logs) else math.nan


@dataclasses.dataclass(frozen=True)
class Padded:
    """Sentences as one stream ``<s> t1 … tk </s> <s> …`` with, per position, the symbols
    left in its sentence (itself included) and its place in the sentence (``<s>`` is 0)."""

    stream: np.ndarray
    remaining: np.ndarray
    position: np.ndarray


def pad(sentences: Sentences, vocab_size: int) -> Padded:
    """Add ``<s>`` (id ``vocab_size``) and ``</s>`` (``vocab_size + 1``) around each sentence."""
    tokens = np.asarray(sentences.tokens, dtype=np.int64)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}); found {tokens.min()}..{tokens.max()}")
    padded = np.asarray(sentences.lengths, dtype=np.int64) + 2
    ends = np.cumsum(padded)
    starts = ends - padded
    stream = np.empty(int(padded.sum()), dtype=np.int64)
    inner = np.ones(len(stream), dtype=bool)
    inner[starts] = False
    inner[ends - 1] = False
    stream[starts] = vocab_size
    stream[ends - 1] = vocab_size + 1
    stream[inner] = tokens
    positions = np.arange(len(stream), dtype=np.int64)
    return Padded(stream, np.repeat(ends, padded) - positions, positions - np.repeat(starts, padded))


@dataclasses.dataclass
class _Counts:
    """One order's n-gram types while counting: keys (as :class:`Order`'s), raw counts, the
    index of each one's suffix (all but its first symbol) in the order below (unigrams: the
    symbol itself, unused), and its first symbol."""

    keys: np.ndarray
    raw: np.ndarray
    suffix: np.ndarray
    first: np.ndarray


def _count(padded: Padded, radix: int, order: int) -> list[_Counts]:
    """The n-gram types of orders 1..``order`` with their raw counts."""
    symbols = np.arange(radix, dtype=np.int64)
    counted = [_Counts(symbols, np.bincount(padded.stream, minlength=radix), symbols, symbols)]
    index = padded.stream  # per position, the type of the n-gram that starts there
    for n in range(2, order + 1):
        starts = np.flatnonzero(padded.remaining >= n)
        if not len(starts):
            raise ValueError(f"no sentence is long enough for a {n}-gram; use an order below {n}")
        keys, inverse, raw = np.unique(
            index[starts] * radix + padded.stream[starts + n - 1], return_inverse=True, return_counts=True
        )
        suffix = np.empty(len(keys), dtype=np.int64)
        suffix[inverse] = index[starts + 1]
        first = counted[-1].first[keys // radix]
        counted.append(_Counts(keys, raw, suffix, first))
        index = np.full(len(padded.stream), -1, dtype=np.int64)
        index[starts] = inverse
    return counted


def _adjusted(counted: list[_Counts], bos: int) -> list[np.ndarray]:
    """Adjusted counts: raw at the top order and after ``<s>``, else distinct left contexts."""
    adjusted = []
    for n, counts in enumerate(counted, start=1):
        if n == len(counted):
            adjusted.append(counts.raw)
            continue
        left = np.bincount(counted[n].suffix, minlength=len(counts.keys))
        values = np.where(counts.first == bos, counts.raw, left)
        if n == 1:
            values[bos] = 0  # <s> is never predicted
        adjusted.append(values)
    return adjusted


def estimate(sentences: Sentences, vocab_size: int, order: int) -> NgramModel:
    """Estimate an interpolated modified Kneser-Ney model of ``order`` over token ids.

    Args:
        sentences: the training text as token ids in ``[0, vocab_size)``.
        vocab_size: the tokenizer's vocabulary size (the ASR model's labels without blank).
        order: the n-gram order, at least 2.

    Returns:
        The model: per order the sorted n-grams, their log10 probabilities and back-offs.

    Raises:
        ValueError: an order below 2, no sentence, a token id outside the vocabulary, or
            sentences too short for an n-gram of ``order``.
    """
    if order < 2:
        raise ValueError(f"the order must be at least 2, got {order}")
    if not len(sentences):
        raise ValueError("no sentence to estimate a language model from")
    padded = pad(sentences, vocab_size)
    radix = vocab_size + 2
    bos = vocab_size
    counted = _count(padded, radix, order)
    adjusted = _adjusted(counted, bos)
    discounts = [estimate_discounts(counts) for counts in adjusted]

    unigram = adjusted[0]
    total = unigram.sum()
    removed = discounts[0].of(unigram)
    probs = [(unigram - removed) / total + removed.sum() / total / (vocab_size + 1)]
    probs[0][bos] = 0.0
    backoffs = []
    for n in range(2, order + 1):
        counts, below = adjusted[n - 1], len(counted[n - 2].keys)
        parent = counted[n - 1].keys // radix
        removed = discounts[n - 1].of(counts)
        denominator = np.bincount(parent, weights=counts, minlength=below)
        is_context = denominator > 0
        gamma = np.divide(
            np.bincount(parent, weights=removed, minlength=below),
            denominator,
            out=np.full(below, np.nan),
            where=is_context,
        )
        lower = probs[-1][counted[n - 1].suffix]
        probs.append((counts - removed) / denominator[parent] + gamma[parent] * lower)
        backoffs.append(gamma)
    backoffs.append(np.full(len(counted[-1].keys), np.nan))
    with np.errstate(divide="ignore"):
        orders = [
            Order(counts.keys, np.log10(prob), np.log10(backoff))
            for counts, prob, backoff in zip(counted, probs, backoffs, strict=True)
        ]
    return NgramModel(vocab_size, orders, discounts)
