"""The name rule (lib/accounts/names.py), without sockets: every rule, with the exact
reason a user is shown."""
import unittest

from lib.accounts import names

DELIMS = "`#`, `<` and `>` are not allowed"
INVISIBLE = "control or invisible characters are not allowed"
SPACE = "white space is not allowed"


class NameRuleTest(unittest.TestCase):
    def refused(self, cases):
        for name, reason in cases:
            with self.subTest(name=name):
                self.assertEqual(names.check(name), reason)

    def accepted(self, cases):
        for name in cases:
            with self.subTest(name=name):
                self.assertIsNone(names.check(name))

    def test_ascii_names_are_accepted(self):
        self.accepted(["alice", "bob123", "u10", "a", "Mary-Jane_O'Neil", "x.y@z", "!$%&*+-=?@^_~",
                       "group-1", "server"])

    def test_empty_is_refused(self):
        self.refused([("", "must not be empty")])

    def test_delimiters_are_refused(self):
        self.assertEqual(names.DELIMITERS, "#<>")
        self.refused([("#evil", DELIMS), ("#", DELIMS), ("a#b", DELIMS), ("evil#", DELIMS),
                      ("<x>", DELIMS), ("<", DELIMS), ("a>b", DELIMS), ("->server#x", DELIMS)])

    def test_control_characters_are_refused(self):
        self.refused([("\x1b[31mred", INVISIBLE), ("a\x00b", INVISIBLE), ("bell\x07", INVISIBLE),
                      ("del\x7f", INVISIBLE), ("c1\x9b31m", INVISIBLE), ("pua\ue000", INVISIBLE),
                      ("unassigned\U000e0080", INVISIBLE)])

    def test_zero_width_and_default_ignorable_characters_are_refused(self):
        for c in ("\u00ad", "\u034f", "\u061c", "\u115f", "\u1160", "\u17b4", "\u17b5", "\u180b",
                  "\u180e", "\u180f", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a",
                  "\u202e", "\u2060", "\u2066", "\u2069", "\u206f", "\u2800", "\u3164", "\ufe00",
                  "\ufe0f", "\ufeff", "\uffa0", "\U0001bca0", "\U0001d173", "\U000e0001",
                  "\U000e0041", "\U000e0100", "\U000e01ef"):
            with self.subTest(char=f"U+{ord(c):04X}"):
                self.assertEqual(names.check(f"a{c}b"), INVISIBLE)
                self.assertEqual(names.check(c), INVISIBLE)
        self.refused([("a\u200bb", INVISIBLE), ("a\u00adb", INVISIBLE), ("alice\u202e", INVISIBLE)])

    def test_white_space_is_refused(self):
        self.refused([(f"a{c}b", SPACE) for c in (" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x85",
                                                   "\u00a0", "\u1680", "\u2002", "\u2007", "\u2028",
                                                   "\u2029", "\u202f", "\u205f", "\u3000")])

    def test_at_most_64_characters_after_nfc(self):
        self.assertEqual(names.MAX_LEN, 64)
        self.accepted(["a" * 64, "é" * 64, "山" * 64])
        self.refused([("a" * 65, "at most 64 characters"), ("é" * 65, "at most 64 characters"),
                      ("a" * 1000, "at most 64 characters")])
        # 64 characters in NFC (128 in NFD): the NFC length counts ...
        self.assertEqual(names.check(names.normalize("e\u0301" * 64)), None)
        # ... also for a decomposed spelling (128 characters, 64 in NFC: not too long)
        self.assertEqual(names.check("e\u0301" * 64), "not in Unicode NFC form")
        self.assertEqual(names.check("e\u0301" * 65), "at most 64 characters")

    def test_nfd_input_is_normalised_and_only_nfc_is_a_name(self):
        nfd, nfc = "zoe\u0308", "zo\u00eb"
        self.assertEqual(names.normalize(nfd), nfc)
        self.assertEqual(names.normalize("山田たろう"), "山田たろう")
        self.assertEqual(names.normalize("\u0410\u0306"), "\u04d0")  # Cyrillic А + breve -> Ӑ
        self.assertIsNone(names.check(nfc))
        self.assertEqual(names.check(nfd), "not in Unicode NFC form")
        ascii_text = "register alice pw"
        self.assertIs(names.normalize(ascii_text), ascii_text)

    def test_latin_mixed_with_cyrillic_or_greek_is_refused(self):
        self.refused([("\u0430lice", "mixes scripts (Latin and Cyrillic)"),     # Cyrillic а
                      ("alic\u0435", "mixes scripts (Latin and Cyrillic)"),     # Cyrillic е
                      ("\u03bfmega", "mixes scripts (Latin and Greek)"),        # Greek ο
                      ("\u00b5ser", "mixes scripts (Latin and Greek)"),         # micro sign
                      ("\u0430\u03b1", "mixes scripts (Cyrillic and Greek)"),
                      ("a\u0430\u03b1", "mixes scripts (Latin, Cyrillic and Greek)"),
                      ("\U0001d41alice", "mixes scripts (Latin and Mathematical)"),  # bold 𝐚
                      ("山田\u0430", "mixes scripts (CJK and Cyrillic)"),
                      ("abc\u05d0", "mixes scripts (Latin and Hebrew)")])

    def test_single_scripts_and_latin_with_cjk_are_accepted(self):
        self.accepted(["\u0430\u043b\u0438\u0441\u0430",   # алиса
                       "δημήτρης", "山田たろう", "山田", "アリス", "タロー", "김민수", "zoë", "tarō",
                       "山田taro", "山田ｔａｒｏ", "ﾀﾛｳ", "ＡＬＩＣＥ", "Ürgüp", "ʻokina", "nº1",
                       "alice2", "алиса_99", "مريم", "דוד"])

    def test_digits_and_punctuation_are_common_to_every_script(self):
        self.accepted(["алиса-2024", "αβγ.1", "山田_42!", "user.name+tag"])


if __name__ == "__main__":
    unittest.main()
