"""Keyed timers for state machines' timeouts."""


class TimerTable:
    """Timers by key, for state machines' timeouts: setting a key again
    replaces its timer; `on_fire(key)` runs when one expires."""

    def __init__(self, reactor, on_fire):
        self.reactor, self.on_fire = reactor, on_fire
        self.timers = {}

    def set(self, key, delay):
        self.cancel(key)
        self.timers[key] = self.reactor.call_later(delay, self._fire, key)

    def cancel(self, key):
        timer = self.timers.pop(key, None)
        if timer:
            timer.cancel()

    def _fire(self, key):
        self.timers.pop(key, None)
        self.on_fire(key)
