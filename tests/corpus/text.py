"""Sentences for the synthetic corpus: a few hundred English words, mixed case, punctuation.

Sentences come from small grammar templates filled from word lists with a seeded
``random.Random``, so the same RNG state gives the same sentence on every machine. The text
carries what real transcripts carry and what the shared normalisation must handle: capitals
(sentence starts, names, places, "I"), commas, periods, question and exclamation marks,
apostrophes ("it's", "don't", "Sarah's"), double quotes and hyphens ("well-known"). Words are
written as spoken (no digits, no abbreviations), so the text is also the right label.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = (
    "Sarah John Maria David Emma Peter Laura James Anna Thomas Grace Daniel Olivia Michael Sophie "
    "Robert Helen Samuel Alice George Rachel Henry Julia Oscar Nina Victor Clara Simon Ruth Martin"
).split()
PLACES = (
    "Boston Chicago London Paris Denver Seattle Texas Ohio Dublin Berlin Madrid Toronto Florida "
    "Oregon Vienna Glasgow Phoenix Atlanta Miami Portland"
).split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
TIMES = (
    "this morning",
    "last night",
    "yesterday",
    "tomorrow",
    "next week",
    "last year",
    "in the evening",
    "every summer",
    "before lunch",
    "after dinner",
    "right now",
    "later today",
)
NOUNS = (
    "court judge meeting budget council report school teacher student garden river bridge market "
    "window kitchen letter question answer problem project company office station train airport "
    "doctor hospital library museum village city country song story picture family child friend "
    "neighbour lawyer witness record policy plan vote bill hearing window table chair door road "
    "car bus ticket phone camera radio computer paper book chapter lesson class test result "
    "price market worker farmer driver officer member speaker audience crowd game team coach "
    "player season weather storm rain morning evening kitchen bottle coffee dinner breakfast "
    "house apartment street corner park forest mountain island beach ocean boat engine machine"
).split()
VERBS = (
    # base, past, third person, -ing
    ("open", "opened", "opens", "opening"),
    ("close", "closed", "closes", "closing"),
    ("find", "found", "finds", "finding"),
    ("bring", "brought", "brings", "bringing"),
    ("read", "read", "reads", "reading"),
    ("write", "wrote", "writes", "writing"),
    ("build", "built", "builds", "building"),
    ("sell", "sold", "sells", "selling"),
    ("buy", "bought", "buys", "buying"),
    ("check", "checked", "checks", "checking"),
    ("follow", "followed", "follows", "following"),
    ("watch", "watched", "watches", "watching"),
    ("carry", "carried", "carries", "carrying"),
    ("change", "changed", "changes", "changing"),
    ("explain", "explained", "explains", "explaining"),
    ("review", "reviewed", "reviews", "reviewing"),
    ("describe", "described", "describes", "describing"),
    ("move", "moved", "moves", "moving"),
    ("paint", "painted", "paints", "painting"),
    ("clean", "cleaned", "cleans", "cleaning"),
    ("fix", "fixed", "fixes", "fixing"),
    ("visit", "visited", "visits", "visiting"),
    ("answer", "answered", "answers", "answering"),
    ("support", "supported", "supports", "supporting"),
    ("remember", "remembered", "remembers", "remembering"),
    ("forget", "forgot", "forgets", "forgetting"),
    ("hear", "heard", "hears", "hearing"),
    ("see", "saw", "sees", "seeing"),
    ("take", "took", "takes", "taking"),
    ("leave", "left", "leaves", "leaving"),
    ("keep", "kept", "keeps", "keeping"),
    ("send", "sent", "sends", "sending"),
    ("call", "called", "calls", "calling"),
    ("pay", "paid", "pays", "paying"),
    ("discuss", "discussed", "discusses", "discussing"),
    ("approve", "approved", "approves", "approving"),
    ("reject", "rejected", "rejects", "rejecting"),
    ("share", "shared", "shares", "sharing"),
    ("borrow", "borrowed", "borrows", "borrowing"),
    ("finish", "finished", "finishes", "finishing"),
)
INTRANSITIVE = (
    ("arrive", "arrived", "arrives", "arriving"),
    ("wait", "waited", "waits", "waiting"),
    ("laugh", "laughed", "laughs", "laughing"),
    ("agree", "agreed", "agrees", "agreeing"),
    ("travel", "travelled", "travels", "travelling"),
    ("sleep", "slept", "sleeps", "sleeping"),
    ("listen", "listened", "listens", "listening"),
    ("work", "worked", "works", "working"),
    ("return", "returned", "returns", "returning"),
    ("speak", "spoke", "speaks", "speaking"),
)
ADJECTIVES = (
    "new old small large quiet loud early late simple difficult important useful careful strange "
    "bright dark warm cold heavy light short long green blue yellow happy tired busy empty full "
    "local public private famous honest modern ancient narrow wide clean broken open safe "
    "expensive cheap fresh final second entire"
).split()
HYPHENATED = (
    "well-known long-term follow-up old-fashioned part-time so-called last-minute full-time "
    "twenty-five thirty-two forty-one sixty-eight brand-new half-empty one-way"
).split()
ADVERBS = (
    "quickly slowly quietly carefully finally suddenly probably certainly really almost "
    "again already never always often sometimes"
).split()
PRONOUNS = (("I", "I'm", "I've"), ("we", "we're", "we've"), ("they", "they're", "they've"))
FEELINGS = "sure glad sorry afraid surprised certain".split()
# the words the templates themselves write
FUNCTION_WORDS = (
    "a an the and but too to on in near before after about that there is do you can why think "
    "going believe said asked replied added so don't can't didn't isn't it's where's there's"
).split()


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def vocabulary() -> set[str]:
    """Every word the templates can emit, lower case, as the shared normalisation writes it."""
    words: set[str] = set()
    for group in (NAMES, PLACES, DAYS, NOUNS, ADJECTIVES, HYPHENATED, ADVERBS, FEELINGS, FUNCTION_WORDS):
        words.update(w.lower() for w in group)
    words.update(f"{name.lower()}'s" for name in NAMES)
    for forms in VERBS + INTRANSITIVE:
        words.update(forms)
    for phrase in TIMES:
        words.update(phrase.split())
    for forms in PRONOUNS:
        words.update(f.lower() for f in forms)
    return words


def _noun_phrase(rng: random.Random) -> str:
    noun = rng.choice(NOUNS)
    roll = rng.random()
    if roll < 0.35:
        return f"the {noun}"
    if roll < 0.6:
        adjective = rng.choice(ADJECTIVES)
        return f"{article(adjective)} {adjective} {noun}"
    if roll < 0.75:
        return f"the {rng.choice(HYPHENATED)} {noun}"
    if roll < 0.9:
        return f"{rng.choice(NAMES)}'s {noun}"
    return f"the {rng.choice(ADJECTIVES)} {noun}"


def _statement(rng: random.Random) -> str:
    verb = rng.choice(VERBS)
    tail = rng.choice(("", f" in {rng.choice(PLACES)}", f" {rng.choice(TIMES)}", f" on {rng.choice(DAYS)}"))
    return f"{rng.choice(NAMES)} {verb[1]} {_noun_phrase(rng)}{tail}."


def _question(rng: random.Random) -> str:
    verb = rng.choice(VERBS)
    form = rng.randrange(4)
    if form == 0:
        return f"Why didn't {_noun_phrase(rng)} {verb[0]} {_noun_phrase(rng)}?"
    if form == 1:
        return f"Do you think {_noun_phrase(rng)} is {rng.choice(ADJECTIVES)}?"
    if form == 2:
        return f"Where's {_noun_phrase(rng)} that {rng.choice(NAMES)} {verb[1]}?"
    return f"Can you {verb[0]} {_noun_phrase(rng)} before {rng.choice(DAYS)}?"


def _contraction(rng: random.Random) -> str:
    subject, be, have = rng.choice(PRONOUNS)
    verb = rng.choice(VERBS)
    form = rng.randrange(5)
    if form == 0:
        return f"It's {rng.choice(ADJECTIVES)}, but {subject} don't {verb[0]} {_noun_phrase(rng)}."
    if form == 1:
        return f"{be.capitalize()} going to {verb[0]} {_noun_phrase(rng)} on {rng.choice(DAYS)}."
    if form == 2:
        return f"There's {_noun_phrase(rng)} near the {rng.choice(NOUNS)}, isn't there?"
    if form == 3:
        return f"{have.capitalize()} {rng.choice(ADVERBS)} {verb[1]} {_noun_phrase(rng)}."
    return f"{subject.capitalize()} can't {verb[0]} {_noun_phrase(rng)} {rng.choice(TIMES)}."


def _quote(rng: random.Random) -> str:
    inner = _statement(rng)[:-1]
    verb = rng.choice(("said", "asked", "replied", "added"))
    return f'"{inner}," {rng.choice(NAMES)} {verb}.'


def _compound(rng: random.Random) -> str:
    first = rng.choice(VERBS + INTRANSITIVE)
    second = rng.choice(INTRANSITIVE)
    return (
        f"After {_noun_phrase(rng)}, {rng.choice(NAMES)} {first[1]} {rng.choice(ADVERBS)}, "
        f"and the {rng.choice(NOUNS)} {second[1]} too."
    )


def _exclamation(rng: random.Random) -> str:
    subject, be, _ = rng.choice(PRONOUNS)
    form = rng.randrange(3)
    if form == 0:
        return f"I can't believe it's {rng.choice(ADJECTIVES)}!"
    if form == 1:
        return f"{be.capitalize()} so {rng.choice(FEELINGS)} about {_noun_phrase(rng)}!"
    return f"Don't {rng.choice(VERBS)[0]} {_noun_phrase(rng)} {rng.choice(ADVERBS)}!"


def _progressive(rng: random.Random) -> str:
    verb = rng.choice(VERBS)
    return (
        f"The {rng.choice(NOUNS)} in {rng.choice(PLACES)} is {verb[3]} {_noun_phrase(rng)}, "
        f"and {rng.choice(NAMES)} {rng.choice(INTRANSITIVE)[2]} {rng.choice(ADVERBS)}."
    )


TEMPLATES: tuple[tuple[Callable[[random.Random], str], float], ...] = (
    (_statement, 3.0),
    (_question, 2.0),
    (_contraction, 2.5),
    (_quote, 1.0),
    (_compound, 1.0),
    (_exclamation, 0.7),
    (_progressive, 1.0),
)


def sentence(rng: random.Random) -> str:
    """One sentence from a weighted template choice."""
    functions, weights = zip(*TEMPLATES, strict=True)
    return rng.choices(functions, weights=weights)[0](rng)
