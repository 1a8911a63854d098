"""Pure tests: state machines, policies and codecs; no network, no processes (./run-tests --quick)."""
