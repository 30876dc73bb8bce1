"""REGEX through RE2 answers exactly as Python's ``re.match`` (flag-engine's matcher) or not at
all: differential tests over generated patterns and texts."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership_pipeline.evaluation.re2_patterns import re2_pattern, re2_texts, regex_matches

# Characters whose meaning differs somewhere between Python and RE2: whitespace RE2's \s lacks
# (\v, \x1c-\x1f), word and non-word characters, digits, regex syntax characters as literals.
ALPHABET = "ab_Z09 \t\x0b\x1c\x1f@.-[]^$\\|()*+?{}"
ATOMS = [
    "a", "b", "Z", "0", r"\.", r"\-", "@", " ", ".", r"\d", r"\D", r"\w", r"\W", r"\s", r"\S",
    "[ab]", "[^ab]", "[a-z0-9]", r"[\d_]", r"[^\s]", r"[\S]", r"[^\S]", r"[\w@]", r"\t", r"\x0b",
    r"\x1c", r"\\", r"\[", r"\$", r"\^",
]  # fmt: skip
QUANTIFIERS = ["", "", "*", "+", "?", "*?", "+?", "{2}", "{1,3}", "{0,}", "{2,}?"]
ANCHORS = ["", "^", "$", r"\A", r"\Z", r"\b"]


@st.composite
def patterns(draw: st.DrawFn, depth: int = 2) -> str:
    pieces = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 9))
        if kind <= 5 or depth == 0:
            piece = draw(st.sampled_from(ATOMS))
        elif kind <= 7:
            piece = "(" + draw(patterns(depth - 1)) + ")"
        else:
            piece = "(?:" + "|".join(draw(st.lists(patterns(depth - 1), min_size=2, max_size=3)))
            piece += ")"
        pieces.append(piece + draw(st.sampled_from(QUANTIFIERS)))
    return draw(st.sampled_from(ANCHORS)) + "".join(pieces) + draw(st.sampled_from(ANCHORS))


texts = st.lists(st.text(ALPHABET, max_size=8), min_size=1, max_size=30)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=patterns(), values=texts)
def test_re2_answers_as_python_matches(pattern: str, values: list[str]) -> None:
    decided = regex_matches(pattern, re2_texts(values))
    if decided is None:
        assert re2_pattern(pattern) is None  # only the pattern may refuse: these texts are ASCII
        return
    assert decided.tolist() == [re.match(pattern, value) is not None for value in values]


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?i)abc",  # a flag
        r"(?s)a.b",
        r"(?m)^a$",
        r"(a)\1",  # a backreference
        r"a(?=b)",  # lookaround
        r"(?<!a)b",
        r"a*+",  # possessive
        r"(?>a+)",  # atomic
        r"a\B",  # \B never matches an empty text in Python, does in RE2
        r"a{2,2000}",  # beyond RE2's repeat limit
        r"(?(1)a|b)",
    ],
)
def test_patterns_beyond_the_safe_subset_stay_with_python(pattern: str) -> None:
    assert re2_pattern(pattern) is None
    assert regex_matches(pattern, re2_texts(["a", "ab"])) is None


def test_texts_beyond_ascii_or_with_a_newline_stay_with_python() -> None:
    # Python's \d and \w are Unicode, "$" also matches before a final newline.
    assert re2_texts(["12", "١٢"]) is None
    assert re2_texts(["a", "a\n"]) is None
    assert regex_matches(r"^\d+$", re2_texts(["12", "١٢"])) is None
    assert regex_matches(r"^\d+$", re2_texts(["12", "x"])).tolist() == [True, False]


def test_the_catalogue_patterns_go_through_re2() -> None:
    for pattern in (r"^user[0-9]*7@example\.com$", r"^user-[0-9]*00$", r".*@gmail\.com"):
        assert re2_pattern(pattern) is not None
