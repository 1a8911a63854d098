"""Keyed timers for state machines: the actions a machine returns to arm
and cancel them, the event it gets when one fires, and the TimerTable that
carries the actions out on a reactor."""
from dataclasses import dataclass


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm timer `key` to fire in `delay` seconds; replaces one with the same key."""
    key: object
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    key: object


@dataclass(frozen=True)
class TimerFired:
    """Timer `key` (armed by SetTimer) expired."""
    key: object


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

    def carry_out(self, action):
        """Run a SetTimer or CancelTimer action."""
        if isinstance(action, SetTimer):
            self.set(action.key, action.delay)
        else:
            self.cancel(action.key)

    def _fire(self, key):
        self.timers.pop(key, None)
        self.on_fire(key)


def timer_handlers(attribute="timers"):
    """Entries for a driver's table of actions: SetTimer and CancelTimer run
    by the driver's TimerTable (`driver.<attribute>`)."""
    def carry_out(driver, action):
        getattr(driver, attribute).carry_out(action)
    return {SetTimer: carry_out, CancelTimer: carry_out}
