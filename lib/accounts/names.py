"""The one name rule for accounts and groups, shared by the TCP service
(lib/social/commands.py) and the UDP hub (lib/hub/wire.py).

A name is 1..MAX_LEN characters in Unicode NFC form, printable, with no
white space, no DELIMITERS, no invisible characters, and letters of one
script (Latin may join Han/Kana/Hangul). `check(name)` says why a name is
refused, or None; callers pass text through `normalize()` first.
"""
import functools
import re
import unicodedata

MAX_LEN = 64          # characters, counted after NFC
# `#`, `<`, `>` frame the hub's datagrams (`A->B#<TOKEN>...`), and a users.txt
# line starting with `#` is a comment.
DELIMITERS = "#<>"

# Characters that render as nothing, so `a\u200bb` would pass for `ab`:
# Unicode's Default_Ignorable_Code_Point set (DerivedCoreProperties.txt) and
# the Braille blank. isprintable() refuses the format controls among them, but
# not the marks and letters (U+034F, U+115F, U+180B, U+3164, U+FE0F, ...).
_INVISIBLE = (
    (0x00AD, 0x00AD),    # soft hyphen
    (0x034F, 0x034F),    # combining grapheme joiner
    (0x061C, 0x061C),    # Arabic letter mark (bidi)
    (0x115F, 0x1160),    # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),    # Khmer inherent vowels
    (0x180B, 0x180F),    # Mongolian variation selectors, vowel separator
    (0x200B, 0x200F),    # zero-width space, (non-)joiners, LRM, RLM
    (0x202A, 0x202E),    # bidi embeddings and overrides
    (0x2060, 0x206F),    # word joiner, invisible operators, bidi isolates
    (0x2800, 0x2800),    # Braille blank: not ignorable, but shows as a space
    (0x3164, 0x3164),    # Hangul filler
    (0xFE00, 0xFE0F),    # variation selectors
    (0xFEFF, 0xFEFF),    # zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),    # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),    # unassigned, reserved as ignorable
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical format controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors supplement
)

# A letter's script is the first word of its Unicode name (LATIN, CYRILLIC,
# GREEK, ...), except where this table says otherwise. None: counts as no
# script (like digits and punctuation).
_SCRIPT_OF_WORD = {
    "HIRAGANA": "CJK", "KATAKANA": "CJK", "KATAKANA-HIRAGANA": "CJK",   # ー
    "HANGUL": "CJK", "BOPOMOFO": "CJK", "IDEOGRAPHIC": "CJK",          # 々 〆
    "FEMININE": "LATIN", "MASCULINE": "LATIN",                         # ª º
    "MICRO": "GREEK",                                                  # µ
    "MODIFIER": None,    # ʻ ʼ: apostrophes of many scripts
}
_WIDTH_WORDS = ("FULLWIDTH", "HALFWIDTH")   # FULLWIDTH LATIN ... is Latin
# Scripts that may share a name: Japanese, Chinese and Korean names mix Han,
# kana or Hangul with Latin letters; every other mix is a look-alike risk.
_MIXABLE = (frozenset({"LATIN", "CJK"}),)
_SCRIPT_LABEL = {"CJK": "CJK"}             # else the title-cased word


def _delimiter_list():
    quoted = [f"`{d}`" for d in DELIMITERS]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


# Public: the client escapes the same characters when it prints (lib/social/protocol.py).
INVISIBLE_RE = re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _INVISIBLE) + "]")

# Rules on the whole name, in the order their reasons are given. Regexes and
# str methods, not a loop per character: the hub checks every account of a
# users.txt when it (re)loads one. `\s` is str.isspace(), as in the hub's _ID.
_TEXT_RULES = (
    (re.compile(r"\s").search, "white space is not allowed"),
    (re.compile(f"[{re.escape(DELIMITERS)}]").search, f"{_delimiter_list()} are not allowed"),
    (lambda n: not n.isprintable() or INVISIBLE_RE.search(n),
     "control or invisible characters are not allowed"),
)


def normalize(text):
    """`text` in Unicode NFC (ASCII is returned as it is)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


@functools.lru_cache(maxsize=4096)   # unicodedata.name() is the slow part
def _script(c):
    """The script of letter `c` (e.g. "LATIN", "CJK"), or None for anything
    that is not a letter of a known script."""
    if not unicodedata.category(c).startswith("L"):
        return None
    words = unicodedata.name(c, "").split()
    if len(words) > 1 and words[0] in _WIDTH_WORDS:
        words = words[1:]
    if not words:
        return None
    return _SCRIPT_OF_WORD.get(words[0], words[0])


def _join(labels):
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def check(name):
    """None when `name` may name an account or a group, else a short reason
    for a user (`Invalid username: <reason>`)."""
    if not name:
        return "must not be empty"
    if len(normalize(name)) > MAX_LEN:
        return f"at most {MAX_LEN} characters"
    if not unicodedata.is_normalized("NFC", name):
        return "not in Unicode NFC form"
    for refused, reason in _TEXT_RULES:
        if refused(name):
            return reason
    if name.isascii():
        return None   # ASCII letters are all Latin
    scripts = {s for s in map(_script, name) if s}
    if len(scripts) > 1 and frozenset(scripts) not in _MIXABLE:
        ordered = sorted(scripts, key=lambda s: (s != "LATIN", s))
        labels = [_SCRIPT_LABEL.get(s, s.title()) for s in ordered]
        return f"mixes scripts ({_join(labels)})"
    return None
