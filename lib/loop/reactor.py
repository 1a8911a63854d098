"""The one event loop of every np-social process: file events and time events.

Modelled on Redis' ae.c: the loop knows nothing of the application. It offers
readers/writers on file objects, timers, "soon" callbacks, a thread-safe
wake-up (for stomp.py's receiver thread and off-loop work), and before-sleep
hooks.

A turn has two phases, and this order is the durability barrier of the
whole system (Redis: `AE_BARRIER`, and `beforeSleep` writing the AOF before
`handleClientsWithPendingWrites`):

1. input: readable files, due timers, callbacks from threads and `call_soon`;
   application code runs here, changes state and *queues* output;
2. before-sleep hooks (the login server's group commit), then output: the
   callbacks registered with `want_output` and the writers of writable files.

Output never runs before the turn's hooks, whatever path queued it (a read, a
timer, a thread's completion), and the output phase runs no application
code (see `LineConnection._flush`). A hook that raises stops the loop at
once, before any of the turn's output: `run()` re-raises, so a failed commit
can never be followed by the replies it was meant to make durable.
"""
import collections
import heapq
import itertools
import logging
import os
import selectors
import signal
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("reactor")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class Timer:
    """A handle for `Reactor.call_later`; `cancel()` is idempotent."""

    __slots__ = ("when", "seq", "callback", "args", "cancelled")

    def __init__(self, when, seq, callback, args):
        self.when, self.seq, self.callback, self.args = when, seq, callback, args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def __lt__(self, other):
        return (self.when, self.seq) < (other.when, other.seq)


class Reactor:
    """A single-threaded selectors loop. Not thread-safe except
    `call_soon_threadsafe` (and `run_in_thread`, which uses it)."""

    DEFAULT_POOL = "default"

    def __init__(self, workers=2, clock=time.monotonic):
        """`workers`: threads of the default pool; `clock`: monotonic seconds
        (a test may pass its own)."""
        self.clock = clock
        self._sel = selectors.DefaultSelector()
        self._handlers = {}          # fd -> [fileobj, reader, writer]
        self._timers = []            # heap of Timer
        self._seq = itertools.count()
        self._soon = collections.deque()
        self._from_threads = collections.deque()
        self._before_sleep = []
        self._output = {}            # callbacks for this turn's output phase (insertion-ordered)
        self._pool_sizes = {self.DEFAULT_POOL: workers}
        self._pools = {}             # name -> ThreadPoolExecutor, made on first use
        self._running = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.add_reader(self._wake_r, self._drain_wakeup)

    # -- file events -------------------------------------------------------
    def _fd(self, fileobj):
        return fileobj if isinstance(fileobj, int) else fileobj.fileno()

    def _update(self, fileobj, reader, writer):
        fd = self._fd(fileobj)
        entry = self._handlers.get(fd)
        if entry is None:
            entry = self._handlers[fd] = [fileobj, None, None]
            old = 0
        else:
            old = (EVENT_READ if entry[1] else 0) | (EVENT_WRITE if entry[2] else 0)
        if reader is not False:
            entry[1] = reader
        if writer is not False:
            entry[2] = writer
        new = (EVENT_READ if entry[1] else 0) | (EVENT_WRITE if entry[2] else 0)
        if new == old:
            return
        if not new:
            del self._handlers[fd]
            self._sel.unregister(fd)
        elif not old:
            self._sel.register(fd, new)
        else:
            self._sel.modify(fd, new)

    def add_reader(self, fileobj, callback):
        """Call `callback()` whenever `fileobj` is readable."""
        self._update(fileobj, callback, False)

    def remove_reader(self, fileobj):
        if self._fd(fileobj) in self._handlers:
            self._update(fileobj, None, False)

    def add_writer(self, fileobj, callback):
        """Call `callback()` whenever `fileobj` is writable."""
        self._update(fileobj, False, callback)

    def remove_writer(self, fileobj):
        if self._fd(fileobj) in self._handlers:
            self._update(fileobj, False, None)

    def forget(self, fileobj):
        """Drop every handler of `fileobj` (call before closing it)."""
        fd = self._fd(fileobj)
        if fd >= 0 and fd in self._handlers:
            del self._handlers[fd]
            self._sel.unregister(fd)

    # -- time events -------------------------------------------------------
    def call_later(self, delay, callback, *args):
        timer = Timer(self.clock() + max(0.0, delay), next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon(self, callback, *args):
        self._soon.append((callback, args))

    def call_soon_threadsafe(self, callback, *args):
        """The only entry point for other threads: queue and wake the loop."""
        self._from_threads.append((callback, args))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # pipe full means a wake-up is already pending

    def _drain_wakeup(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def add_pool(self, name, workers):
        """A named worker pool, so one kind of blocking work (AWS calls) can
        never take every thread from another (password hashing)."""
        self._pool_sizes[name] = workers

    def pool_size(self, name=DEFAULT_POOL):
        return self._pool_sizes[name]

    def run_in_thread(self, fn, *args, done=None, pool=DEFAULT_POOL):
        """Run a blocking `fn(*args)` on worker pool `pool` (hashing, boto3,
        stomp connect); `done(result, error)` then runs on the loop."""
        executor = self._pools.get(pool)
        if executor is None:
            executor = self._pools[pool] = ThreadPoolExecutor(
                max_workers=self._pool_sizes[pool], thread_name_prefix=f"offloop-{pool}")

        def finished(future):
            if future.cancelled() or done is None:  # cancelled: the loop is shutting down
                return
            err = future.exception()
            self.call_soon_threadsafe(done, None if err else future.result(), err)

        executor.submit(fn, *args).add_done_callback(finished)

    # -- turns -------------------------------------------------------------
    def add_before_sleep(self, hook):
        """`hook()` runs at the end of every turn, before any output of the
        turn. It is not guarded: an exception stops the loop (`run()` raises)."""
        self._before_sleep.append(hook)

    def want_output(self, callback):
        """Run `callback()` in this turn's output phase, after the hooks. It
        must only move bytes: state changes belong to the input phase."""
        self._output[callback] = None

    def add_signal_handler(self, signum, callback):
        signal.signal(signum, lambda *_: self.call_soon_threadsafe(callback))

    def stop(self):
        self._running = False

    def run(self):
        """Turn until `stop()`: select, dispatch, timers, soon, hooks, flush."""
        self._running = True
        while self._running:
            self.run_once()
        for executor in self._pools.values():
            executor.shutdown(wait=False, cancel_futures=True)

    def run_once(self, max_wait=None):
        timeout = self._timeout()
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        try:
            events = self._sel.select(timeout)
        except InterruptedError:
            events = []
        writable = []
        for key, mask in events:          # phase 1: input
            entry = self._handlers.get(key.fd)
            if entry is None:
                continue
            if mask & EVENT_READ and entry[1]:
                self._guard(entry[1])
            if mask & EVENT_WRITE:
                writable.append((key.fd, entry))
        now = self.clock()
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guard(timer.callback, *timer.args)
        while self._from_threads:
            self._soon.append(self._from_threads.popleft())
        for _ in range(len(self._soon)):
            callback, args = self._soon.popleft()
            self._guard(callback, *args)
        for hook in self._before_sleep:   # phase 2: hooks, then output
            hook()
        if self._output:
            pending, self._output = self._output, {}
            for callback in pending:
                self._guard(callback)
        for fd, entry in writable:
            # Still the same registration (the fd may have been closed and
            # reused during the turn) and still wanting to write?
            if self._handlers.get(fd) is entry and entry[2]:
                self._guard(entry[2])

    def _timeout(self):
        if self._soon or self._from_threads or self._output:
            return 0
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0].when - self.clock())

    def _guard(self, callback, *args):
        # One faulty handler must never take the whole process down.
        try:
            callback(*args)
        except Exception:
            log.exception("handler %r failed", callback)
