"""REGEX conditions decided by RE2 (Arrow's ``match_substring_regex``) where RE2 provably gives
Python's answers, for many values at once and without the GIL.

flag-engine decides REGEX with Python's ``re.compile(value).match(str(context_value))``. Python
runs that once per distinct value (1.8M calls, about 0.4 s, for the regex conditions of a 1M
environment). RE2 answers *whether* a pattern matches the same way as Python for regular
patterns; the two differ in features RE2 lacks (backreferences, lookaround, possessive and
atomic forms, conditionals), in flags, and in what a few escapes mean on non-ASCII text or at a
final newline. So a pattern is translated from Python's own parse tree, never passed through as
text, and only when:

* it uses literals, ``.``, character classes, ``\\d \\D \\w \\W \\s \\S``, groups without
  flags, alternation, greedy or lazy repetition (bounds up to 1000), and the anchors
  ``^ $ \\A \\Z \\b``; anything else, a flag included, keeps Python;
* the values are ASCII and hold no newline: on such text Python's Unicode ``\\d \\w \\b`` are
  RE2's ASCII ones, ``$`` is the end of the text, and ``.`` matches every character.

``\\s`` is spelt out as Python's ASCII whitespace (RE2's lacks ``\\v`` and ``\\x1c``-``\\x1f``);
``\\B`` keeps Python (it never matches an empty string there, RE2's does). Every literal is
written as ``\\x{...}``, so no character means something else to RE2.
"""

from __future__ import annotations

import re
import re._constants as sre  # Python's regex parser: the one flag-engine's patterns go through
import re._parser as sre_parse
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MAX_RE2_REPEAT = 1000
_PYTHON_ASCII_SPACE = r"\t\n\x{b}\x{c}\r\x{1c}-\x{1f} "
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}
_ANCHORS = {
    sre.AT_BEGINNING: r"\A",
    sre.AT_BEGINNING_STRING: r"\A",
    sre.AT_END: r"\z",  # values hold no newline: Python's "$" is the end of the text
    sre.AT_END_STRING: r"\z",
    sre.AT_BOUNDARY: r"\b",
}
# Flags that change no match: str patterns are Unicode by default, VERBOSE only shapes parsing.
_HARMLESS_FLAGS = sre.SRE_FLAG_UNICODE | sre.SRE_FLAG_VERBOSE


class _NotTranslatable(Exception):
    pass


def re2_pattern(pattern: str) -> str | None:
    """An RE2 pattern that, searched in an ASCII text without newlines, matches exactly when
    ``re.match(pattern, text)`` does; None when there is none (then Python decides)."""
    try:
        parsed = sre_parse.parse(pattern)
        if parsed.state.flags & ~_HARMLESS_FLAGS:
            return None
        return r"\A(?:" + _sequence(parsed) + ")"
    except (_NotTranslatable, re.error, RecursionError):
        return None


def re2_texts(values: list[str] | pa.Array) -> pa.Array | None:
    """The values as Arrow strings, when they are texts RE2 decides as Python does (ASCII, no
    newline); else None."""
    array = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    if not pc.all(pc.string_is_ascii(array)).as_py():
        return None
    if pc.any(pc.match_substring(array, "\n")).as_py():
        return None
    return array


def regex_matches(pattern: str, texts: pa.Array | None) -> np.ndarray | None:
    """``re.match(pattern, text) is not None`` for every one of ``texts`` (from
    :func:`re2_texts`), decided by RE2, or None when RE2 cannot be trusted with them."""
    translated = None if texts is None else re2_pattern(pattern)
    if translated is None:
        return None
    try:
        matched = pc.match_substring_regex(texts, translated)
    except pa.ArrowInvalid:  # beyond RE2's limits (program size, nesting)
        return None
    return matched.to_numpy(zero_copy_only=False)


def _sequence(items: Any) -> str:
    return "".join(_item(op, av) for op, av in items)


def _item(op: Any, av: Any) -> str:
    if op is sre.LITERAL:
        return _char(av)
    if op is sre.NOT_LITERAL:
        return "[^" + _char(av) + "]"
    if op is sre.ANY:
        return "(?s:.)"  # no newline in the text: Python's "." matches every character
    if op is sre.IN:
        return _class(av)
    if op is sre.CATEGORY:
        return _category(av)
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, body = av
        if low > _MAX_RE2_REPEAT or (high != sre.MAXREPEAT and high > _MAX_RE2_REPEAT):
            raise _NotTranslatable
        bounds = f"{{{low},}}" if high == sre.MAXREPEAT else f"{{{low},{high}}}"
        return "(?:" + _sequence(body) + ")" + bounds + ("?" if op is sre.MIN_REPEAT else "")
    if op is sre.SUBPATTERN:
        _, add_flags, del_flags, body = av
        if add_flags or del_flags:
            raise _NotTranslatable
        return "(?:" + _sequence(body) + ")"
    if op is sre.BRANCH:
        _, branches = av
        return "(?:" + "|".join(_sequence(branch) for branch in branches) + ")"
    if op is sre.AT and av in _ANCHORS:
        return _ANCHORS[av]
    raise _NotTranslatable  # backreferences, lookaround, possessive / atomic forms, \B, ...


def _class(items: Any) -> str:
    negated = bool(items) and items[0][0] is sre.NEGATE
    members = items[1:] if negated else items
    if len(members) == 1 and members[0] == (sre.CATEGORY, sre.CATEGORY_NOT_SPACE):
        return "[" + ("" if negated else "^") + _PYTHON_ASCII_SPACE + "]"  # \S, [^\S]
    parts = []
    for op, av in members:
        if op is sre.LITERAL:
            parts.append(_char(av))
        elif op is sre.RANGE:
            parts.append(_char(av[0]) + "-" + _char(av[1]))
        elif op is sre.CATEGORY and av in _CATEGORIES:
            parts.append(_CATEGORIES[av])
        elif op is sre.CATEGORY and av is sre.CATEGORY_SPACE:
            parts.append(_PYTHON_ASCII_SPACE)
        else:  # \S inside a class has no spelling as a union of ranges here
            raise _NotTranslatable
    if not parts:
        raise _NotTranslatable
    return "[" + ("^" if negated else "") + "".join(parts) + "]"


def _category(category: Any) -> str:
    if category in _CATEGORIES:
        return _CATEGORIES[category]
    if category is sre.CATEGORY_SPACE:
        return "[" + _PYTHON_ASCII_SPACE + "]"
    if category is sre.CATEGORY_NOT_SPACE:
        return "[^" + _PYTHON_ASCII_SPACE + "]"
    raise _NotTranslatable


def _char(code: int) -> str:
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate: not a character RE2 can hold
        raise _NotTranslatable
    return f"\\x{{{code:x}}}"
