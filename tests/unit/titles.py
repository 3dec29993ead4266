"""Titles that are hard to cut into words, with their tokens written by hand.

Shared by the tests of the rule (:func:`attune.features.title_tokens` and its Spark expression,
``tests/unit/test_features.py``) and of the models' item table that uses it
(``tests/unit/models/test_models_encoders.py``). The rule: a trailing ``(YYYY)`` goes, the rest
is lower-cased and cut into runs of letters and digits; repeats and one-letter words stay.
"""

from __future__ import annotations

TRICKY_TITLES: list[tuple[str | None, list[str]]] = [
    (None, []),
    ("", []),
    ("(2010)", []),  # nothing but a year
    ("Amélie (2001)", ["amélie"]),  # precomposed accent: part of the word
    (
        "Nausicaä of the Valley of the Wind (1984)",
        ["nausicaä", "of", "the", "valley", "of", "the", "wind"],
    ),
    ("Se7en (1995)", ["se7en"]),  # digits inside a word
    ("Ocean's 11 (2001)", ["ocean", "s", "11"]),  # apostrophe separates, one-letter words stay
    (
        "2001: A Space Odyssey (1968)",
        ["2001", "a", "space", "odyssey"],
    ),  # only a trailing year goes
    ("The Year (1999) of Living (2003)", ["the", "year", "1999", "of", "living"]),
    (
        "Crouching Tiger, Hidden Dragon (Wo hu cang long) (2000)",
        ["crouching", "tiger", "hidden", "dragon", "wo", "hu", "cang", "long"],
    ),
    (
        "Dr. Strangelove or: How I Learned (1964)",
        ["dr", "strangelove", "or", "how", "i", "learned"],
    ),
    ("Fantasia 2000 (1999)  ", ["fantasia", "2000"]),  # whitespace after the year
    ("Heat\u00a0(1995)\n", ["heat"]),  # no-break space before it, newline after it
    ("Film (١٩٩٩)", ["film"]),  # a year in Arabic-Indic digits is a year too
    ("WALL·E (2008)", ["wall", "e"]),  # middle dot: punctuation
    ("Jean-Luc's café_au_lait", ["jean", "luc", "s", "café", "au", "lait"]),  # - ' _ separate
    ("Tokyo Story 東京物語 (1953)", ["tokyo", "story", "東京物語"]),
    ("Part Ⅷ ½", ["part", "ⅷ", "½"]),  # Roman numeral and fraction are numbers
    ("ΟΔΟΣ ΣΤΑ ΑΣΤΡΑ", ["οδος", "στα", "αστρα"]),  # final sigma lower-cased as ς
    ("Cafe\u0301", ["cafe"]),  # a decomposed accent is no letter: catalogs should send NFC
    ('Ünïcödé — "QUOTES" & <tags>!', ["ünïcödé", "quotes", "tags"]),
]
