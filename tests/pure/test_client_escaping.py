"""What the client prints of what others wrote (issue 11, item 9): control,
format, separator and invisible characters as visible escapes (`\\x1b`,
`\\u200b`, `\\U000e0001`), everything else as it is, so the course's plain
ASCII output is unchanged byte for byte."""
import unicodedata
import unittest

from lib.accounts import names
from lib.clients.tcp_routing import ClientCore
from lib.social import protocol
from lib.social.protocol import is_push, render, render_chat, render_push, shown

ATTACK = "\x1b[2J\x1b[H\u2026re-enter password:"


def escaped(code):
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(line):
    """Nothing in `line` a terminal would act on or hide."""
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
                   or names.INVISIBLE_RE.match(c) for c in line)


class ShownTest(unittest.TestCase):
    def test_printable_ascii_and_printable_unicode_are_unchanged(self):
        ascii_ = "".join(map(chr, range(0x20, 0x7f)))      # the backslash too
        self.assertEqual(shown(ascii_), ascii_)
        for text in ("\u5c71\u7530", "zo\u00eb", "\U0001f600 ok", "\u00a0nbsp", "\u0627\u0644", "\u00e9\u0301"):
            self.assertEqual(shown(text), text)
        self.assertEqual(shown(42), "42")

    def test_control_characters(self):
        for code in list(range(0x00, 0x20)) + list(range(0x7f, 0xa0)):
            with self.subTest(code=hex(code)):
                self.assertEqual(shown(f"a{chr(code)}b"), f"a{escaped(code)}b")
        self.assertEqual(shown("\x1b[2J"), "\\x1b[2J")
        self.assertEqual(shown("\t\n\r"), "\\x09\\x0a\\x0d")

    def test_zero_width_bidi_separators_and_surrogates(self):
        for text, want in (("a\u200bb", "a\\u200bb"), ("\u202eevil", "\\u202eevil"),
                           ("\u2066x\u2069", "\\u2066x\\u2069"), ("\ufeff", "\\ufeff"),
                           ("soft\u00adhyphen", "soft\\xadhyphen"), ("l1\u2028l2\u2029", "l1\\u2028l2\\u2029"),
                           ("\U000e0001tag", "\\U000e0001tag"), ("\ud800", "\\ud800"),
                           ("\u0600", "\\u0600"), ("\ufff9", "\\ufff9")):
            with self.subTest(text=ascii(text)):
                self.assertEqual(shown(text), want)

    def test_every_invisible_character_of_the_name_rule(self):
        for low, high in names._INVISIBLE:
            for code in {low, (low + high) // 2, high}:
                with self.subTest(code=hex(code)):
                    self.assertEqual(shown(chr(code)), escaped(code))

    def test_nothing_unsafe_survives_the_whole_bmp(self):
        every = "".join(map(chr, range(0x10000)))
        out = shown(every)
        self.assertTrue(safe(out))
        out.encode("utf-8")      # no lone surrogate left: stdout can take it


class RenderTest(unittest.TestCase):
    def test_course_replies_print_as_before(self):
        self.assertEqual(render({"status": 0, "post": [{"id": "a", "message": "m n \\ x"}]}), ["a: m n \\ x"])
        self.assertEqual(render({"status": 1, "message": "b is not online"}), ["b is not online"])
        self.assertEqual(render_chat(protocol.chat_body("a", "hi", to="b")), "<<<a->b: hi>>>")
        self.assertEqual(render_chat(protocol.chat_body("a", "hi", group="g")), "<<<a->GROUP<g>: hi>>>")
        push = {"push": "message", "id": "1", "to": "b", "from": "a", "message": "hi"}
        self.assertEqual(render_push(push), "<<<a->b: hi>>>")
        self.assertEqual(render_push({**push, "group": "g"}), "<<<a->GROUP<g>: hi>>>")
        self.assertEqual(render_push({**push, "group": None}), "<<<a->b: hi>>>")

    def test_a_push_is_a_line_without_status(self):
        self.assertTrue(is_push({"push": "message", "id": "1", "to": "b", "from": "a", "message": "hi"}))
        self.assertTrue(is_push({"push": "anything"}))                 # one we cannot print: still no reply
        for obj in ({"status": 0, "message": "Listening"}, {"push": "message", "status": 0},
                    {"status": 1, "message": "push"}, None, [], "push", {"friend": []}):
            self.assertFalse(is_push(obj), obj)

    def test_the_fake_prompt_prints_harmlessly(self):
        lines = render({"status": 0, "post": [{"id": "mallory", "message": ATTACK}]})
        self.assertEqual(lines, ["mallory: \\x1b[2J\\x1b[H\u2026re-enter password:"])
        self.assertTrue(all(safe(line) for line in lines))

    def test_every_field_others_wrote_is_escaped(self):
        bad = "x\x1b]0;t\x07\u200b"
        want = "x\\x1b]0;t\\x07\\u200b"
        for key in ("invite", "friend", "group"):
            self.assertEqual(render({"status": 0, key: [bad, "ok"]}), [want, "ok"])
        self.assertEqual(render({"status": 0, "post": [{"id": bad, "message": bad}]}), [f"{want}: {want}"])
        self.assertEqual(render({"status": 1, "message": f"{bad} does not exist"}), [f"{want} does not exist"])
        self.assertEqual(render({"status": 0, "group": ["g"], "note": f"({bad})"}), ["g", f"({want})"])
        self.assertEqual(render_chat(protocol.chat_body(bad, bad, to=bad)), f"<<<{want}->{want}: {want}>>>")
        self.assertEqual(render_chat(protocol.chat_body(bad, bad, group=bad)),
                         f"<<<{want}->GROUP<{want}>: {want}>>>")
        push = {"push": "message", "id": bad, "to": bad, "from": bad, "message": bad}
        self.assertEqual(render_push(push), f"<<<{want}->{want}: {want}>>>")
        self.assertEqual(render_push({**push, "group": bad}), f"<<<{want}->GROUP<{want}>: {want}>>>")

    def test_a_cut_list_prints_its_note_after_the_items(self):
        self.assertEqual(render({"status": 0, "post": [{"id": "a", "message": "m"}],
                                 "note": "(only 1 of 2 posts shown: the newest of each friend)"}),
                         ["a: m", "(only 1 of 2 posts shown: the newest of each friend)"])
        self.assertEqual(render({"status": 0, "group": []}), ["No groups"])

    def test_through_the_client_core(self):
        core = ClientCore()
        step = core.route("login bob pw")
        core.on_reply(step, {"status": 0, "token": "T", "message": "Success!", "app_server": "127.0.0.1:9"})
        out = core.on_reply(core.route("receive-post bob"),
                            {"status": 0, "post": [{"id": "eve", "message": ATTACK}]})
        self.assertEqual(out.lines, ["eve: \\x1b[2J\\x1b[H\u2026re-enter password:"])
        push = {"push": "message", "id": 1, "from": "eve\u202e", "to": "bob", "message": ATTACK}
        self.assertEqual(core.on_push(push), ["<<<eve\\u202e->bob: \\x1b[2J\\x1b[H\u2026re-enter password:>>>"])


if __name__ == "__main__":
    unittest.main()
