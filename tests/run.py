"""Run the tests in tiers and close with 'N passed, N failed, N skipped'.

    python tests/run.py                every tier: tests/pure, then tests/live
    python tests/run.py --quick        the pure tier only
    python tests/run.py NAME ...       the named packages, modules, classes or methods
                                       (tests.pure.test_social, tests.live.test_broker.BrokerTest,
                                       tests/pure/test_social.py, tests.live)

Tiers:
  pure  tests/pure: cores, state machines, codecs, the store on a temporary
        directory. No network and no other program: while the tier runs, a
        test that connects, binds or sends on an IP socket, or starts a
        process through `subprocess`, fails (socket pairs, pipes and the
        store's own snapshot fork are fine). The whole tier takes < 10 s.
  live  tests/live (and any test module outside tests/pure): real servers,
        clients, ActiveMQ, moto's EC2 server. Minutes. They use the run's
        own ActiveMQ (tests/broker_instance.py: a child java process on a
        free loopback port, with generated credentials), started before
        the test modules load and stopped at the end; never the machine's.

Each tier's wall time is printed at the end. The exit status is 1 if any
test failed or none ran, 2 for a usage error.
"""
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PURE, LIVE = "pure", "live"
PURE_BUDGET = 10.0            # seconds the whole pure tier may take
USAGE = "usage: run-tests [--quick | NAME ...]   (NAME: tests.pure.test_social, tests.live.test_broker, ...)"


def tier_of(test):
    """PURE for tests under tests/pure (also when their module failed to
    import), else LIVE."""
    test_id = test.id()
    for prefix in ("unittest.loader._FailedTest.", "unittest.loader.ModuleImportFailure."):
        if test_id.startswith(prefix):
            test_id = test_id[len(prefix):]
    return PURE if test_id == "tests.pure" or test_id.startswith("tests.pure.") else LIVE


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


class PureTierViolation(AssertionError):
    """Not an OSError, so code under test that handles network errors does
    not take it for one."""


class PureGuard:
    """While active: IP socket connect/bind/send and subprocess launches
    raise PureTierViolation, and are recorded (in case the code under test
    swallows the exception) so the test is failed all the same."""

    def __init__(self):
        self.violations = []
        self._lock = threading.Lock()
        self._patches = []

    def _violation(self, what):
        message = (f"{what}: the pure tier uses no network and starts no process "
                   "(a test that needs them belongs in tests/live)")
        with self._lock:
            self.violations.append(message)
        raise PureTierViolation(message)

    def _socket_method(self, name):
        original = getattr(socket.socket, name)
        guard = self

        def method(sock, *args, **kwargs):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                address = (args[-1] if name == "sendto" else args[0]) if args else None
                guard._violation(f"socket.{name} to {address!r}")
            return original(sock, *args, **kwargs)
        return method

    def _execute_child(self, popen, args, *rest, **kwargs):
        self._violation(f"subprocess {args!r}")

    def __enter__(self):
        for name in ("connect", "connect_ex", "bind", "sendto"):
            self._patches.append(mock.patch.object(socket.socket, name, self._socket_method(name)))
        guard = self
        self._patches.append(mock.patch.object(
            subprocess.Popen, "_execute_child",
            lambda popen, args, *rest, **kw: guard._execute_child(popen, args, *rest, **kw)))
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self._patches):
            patch.stop()
        self._patches.clear()

    def take(self):
        with self._lock:
            found, self.violations = self.violations, []
        return found


def test_key(test):
    """The id of a test, or of the test a subtest belongs to."""
    return getattr(test, "test_case", test).id()


class TierResult(unittest.TextTestResult):
    """A TextTestResult that notes which tests ran, and fails a pure test
    whose violation the code under test swallowed."""

    guard = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_ids = []

    def startTest(self, test):
        self.run_ids.append(test_key(test))
        self._failed_already = False
        if self.guard:
            self.guard.take()
        super().startTest(test)

    def addError(self, test, err):
        self._failed_already = True
        super().addError(test, err)

    def addFailure(self, test, err):
        self._failed_already = True
        super().addFailure(test, err)

    def addSubTest(self, test, subtest, err):
        if err is not None:
            self._failed_already = True
        super().addSubTest(test, subtest, err)

    def counts(self):
        """(tests run, tests failed, tests skipped): a test counts once,
        however many of its subtests failed; a class or module whose set-up
        failed counts as one failed test."""
        failed = {test_key(t) for t, _ in self.failures + self.errors}
        failed |= {test_key(t) for t in self.unexpectedSuccesses}
        skipped = {test_key(t) for t, _ in self.skipped} - failed
        return set(self.run_ids), failed, skipped

    def stopTest(self, test):
        found = self.guard.take() if self.guard else []
        if found and not self._failed_already:
            try:
                raise PureTierViolation("; ".join(found))
            except PureTierViolation:
                super().addError(test, sys.exc_info())
        super().stopTest(test)


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run_tier(name, tests):
    """Run `tests` as one tier; (result, wall seconds)."""
    stream = sys.stderr
    print(f"\n==== {name} tier: {plural(len(tests), 'test')} ====", file=stream, flush=True)
    runner = unittest.TextTestRunner(stream=stream, verbosity=2, resultclass=TierResult)
    suite = unittest.TestSuite(tests)
    start = time.monotonic()
    if name == PURE:
        with PureGuard() as guard:
            TierResult.guard = guard
            try:
                result = runner.run(suite)
            finally:
                TierResult.guard = None
    else:
        result = runner.run(suite)
    return result, time.monotonic() - start


def load_names(loader, names):
    """Dotted names or paths (tests/pure/test_social.py); a package (tests.live,
    tests/pure) stands for every test module under it."""
    suite = unittest.TestSuite()
    for name in names:
        if name.endswith(".py") or os.sep in name:
            path = os.path.relpath(os.path.abspath(name), ROOT)
            name = path[:-3] if path.endswith(".py") else path
            name = name.strip(os.sep).replace(os.sep, ".")
        directory = os.path.join(ROOT, *name.split("."))
        if os.path.isdir(directory):
            suite.addTest(loader.discover(directory, top_level_dir=ROOT))
        else:
            suite.addTest(loader.loadTestsFromName(name))
    return suite


def load(argv):
    """-> {tier: [tests]} in the order the tiers run, or a usage error (str)."""
    quick = "--quick" in argv
    names = [a for a in argv if a != "--quick"]
    if any(a in ("-h", "--help") for a in names):
        return USAGE
    bad = [a for a in names if a.startswith("-")]
    if bad:
        return f"unknown option {bad[0]}\n{USAGE}"
    if quick and names:
        return f"--quick runs the whole pure tier: give either --quick or names\n{USAGE}"
    loader = unittest.TestLoader()
    if quick:
        suite = loader.discover(os.path.join(ROOT, "tests", "pure"), top_level_dir=ROOT)
    elif names:
        suite = load_names(loader, names)
    else:
        suite = loader.discover(os.path.join(ROOT, "tests"), top_level_dir=ROOT)
    tiers = {PURE: [], LIVE: []}
    for test in flatten(suite):
        tiers[tier_of(test)].append(test)
    if quick:
        tiers[LIVE] = []
    return {name: tests for name, tests in tiers.items() if tests}


def may_run_live(argv):
    """Could this command line include a live test? (Decided before the
    modules load, so that they see the test broker's address.)"""
    if "--quick" in argv or any(a in ("-h", "--help") for a in argv):
        return False
    names = [a for a in argv if not a.startswith("-")]
    pure = ("tests.pure", "tests/pure")
    return not names or any(n not in pure and not n.startswith(("tests.pure.", "tests/pure/"))
                            for n in names)


def start_broker(argv):
    """This run's own ActiveMQ (tests/broker_instance.py), started now and
    awaited before the live tier: (broker or None, why it is missing)."""
    from tests import broker_instance
    if not may_run_live(argv):
        return None, None
    try:
        return broker_instance.start_for_run(), None
    except (broker_instance.BrokerError, OSError) as e:
        return None, str(e)


def broker_ready(broker, error):
    """None once the test broker takes logins, else why the live tier cannot run."""
    from tests import broker_instance
    if broker is None:
        return error or "no test broker"
    try:
        seconds = broker.wait_ready()
    except broker_instance.BrokerError as e:
        return str(e)
    print(f"test broker {broker.address} (pid {broker.proc.pid}) ready {seconds:.2f} s after "
          f"its start; log {broker.log_path}", file=sys.stderr, flush=True)
    return None


def main(argv):
    sys.path.insert(0, ROOT)
    from tests import broker_instance
    broker, broker_error = start_broker(argv)
    try:
        return run_tiers(argv, broker, broker_error)
    finally:
        broker_instance.stop_for_run()


def run_tiers(argv, broker, broker_error):
    tiers = load(argv)
    if isinstance(tiers, str):
        print(tiers, file=sys.stderr)
        return 2
    if LIVE not in tiers and broker is not None:
        from tests import broker_instance
        broker_instance.stop_for_run()        # only pure tests after all
    ran, failed, skipped = set(), set(), set()
    timings = []
    live_missing = None
    for name, tests in tiers.items():
        if name == LIVE:
            live_missing = broker_ready(broker, broker_error)
            if live_missing:
                print(f"\n==== live tier NOT RUN: the tests' own broker did not start: "
                      f"{live_missing}", file=sys.stderr)
                continue
        result, seconds = run_tier(name, tests)
        tier_ran, tier_failed, tier_skipped = result.counts()
        ran |= tier_ran
        failed |= tier_failed
        skipped |= tier_skipped
        timings.append((name, result.testsRun, seconds))
    sys.stderr.flush()
    for name, count, seconds in timings:
        note = ""
        if name == PURE and seconds >= PURE_BUDGET:
            note = f": OVER the pure tier's {PURE_BUDGET:g} s budget"
        print(f"{name} tier: {plural(count, 'test')} in {seconds:.2f} s{note}")
    if live_missing:
        print(f"live tier: {plural(len(tiers[LIVE]), 'test')} NOT RUN (no test broker)")
    passed = ran - failed - skipped
    print(f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 0 if not failed and ran and not live_missing else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
