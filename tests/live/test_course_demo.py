"""The course's own demo files, run through ./client against one fresh
./server each set, byte for byte (lines starting with <<< removed).

The files are the course's, not this repository's: they live beside it
(../shared/course/tests, or NP_COURSE_TESTS=DIR). Without them these tests
skip and say why; CI has them and runs them."""
import os
import unittest

from tests.support import COURSE, LoginServer, needs_course_files, run_client, without_chat


def demo_files(name):
    base = os.path.join(COURSE, name)
    for sub in ("test", "testdata"):
        if os.path.isdir(os.path.join(base, sub)):
            tests = sorted(os.listdir(os.path.join(base, sub)), key=lambda f: int(f.split(".")[0]))
            return [(os.path.join(base, sub, t), os.path.join(base, "answer", t)) for t in tests]
    return [(os.path.join(base, "input.txt"), os.path.join(base, "output.txt"))]


@needs_course_files
class CourseDemoTest(unittest.TestCase):
    def run_set(self, name):
        files = demo_files(name)
        missing = [path for pair in files for path in pair if not os.path.isfile(path)]
        self.assertEqual(missing, [], f"{name}: demo files missing under {COURSE}")
        with LoginServer() as server:
            for test, answer in files:
                with self.subTest(file=os.path.basename(test)):
                    with open(test) as f, open(answer) as g:
                        got = without_chat(run_client(server.port, f.read()))
                        self.assertEqual(got, g.read())

    def test_hw5_demo(self):
        self.run_set("hw5-demo")

    def test_hw4_demo(self):
        self.run_set("hw4-demo")

    def test_hw2_hw3_sample(self):
        self.run_set("hw2-hw3-sample")


if __name__ == "__main__":
    unittest.main()
