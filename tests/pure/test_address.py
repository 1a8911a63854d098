"""The one address parser (lib/loop/address.py)."""
import unittest

from lib.loop.address import format_address, parse_address


class AddressTest(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(parse_address("10.0.0.5:61614"), ("10.0.0.5", 61614))
        self.assertEqual(parse_address(" host:1 "), ("host", 1))
        self.assertEqual(parse_address("broker.local", default_port=61613), ("broker.local", 61613))
        self.assertEqual(parse_address("[::1]:5"), ("::1", 5))
        self.assertEqual(parse_address("[::1]", default_port=9), ("::1", 9))

    def test_malformed_addresses_say_why(self):
        for bad, why in (("", "bad address"), (":61613", "bad address"), ("h:x", "bad port"),
                         ("h:0", "1-65535"), ("h:70000", "1-65535"), ("h:-1", "1-65535"),
                         ("[::1", "no closing ]"), ("[::1]x", "bad address"), ("host", "no port")):
            with self.assertRaises(ValueError, msg=bad) as caught:
                parse_address(bad)
            self.assertIn(why, str(caught.exception))

    def test_format_round_trips(self):
        for host, port in (("127.0.0.1", 8888), ("::1", 5), ("example.org", 1)):
            self.assertEqual(parse_address(format_address(host, port)), (host, port))
        self.assertEqual(format_address("::1", 5), "[::1]:5")


if __name__ == "__main__":
    unittest.main()
