"""The EC2 launcher's driver: boto3 calls off the loop, retries as timers.

Every boto3 call runs on the reactor's "aws" worker pool (so a slow AWS never
takes the threads that hash passwords), at most as many at a time as the
pool has threads; its result comes back on the loop. Retries (throttling,
capacity, connection errors, eventual consistency) are reactor timers with
exponential backoff and jitter. What the launcher knows about its instances
is the `Table` of reconcile.py; this module only moves between it and AWS.

`close()` is the one call that waits: at shutdown it hands the whole
clean-up (wait for run_instances calls still under way, find strays,
terminate with retries) to one worker call and waits on its future, at most
`timeout` seconds. The loop thread never sleeps.
"""
import collections
import logging
import secrets
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass

from lib.fleet.launchers.ec2.errors import (TERMINATE_ATTEMPTS, backoff, describe_error, is_not_found,
                                            is_transient)
from lib.fleet.launchers.ec2.options import TAG_CLUSTER, TAG_LAUNCHER, run_params
from lib.fleet.launchers.ec2.reconcile import (ACTIVE_STATES, NOT_FOUND_GRACE, Instance, Seen, State,
                                               Table)
from lib.fleet.launchers.ec2.shutdown import terminate_all

log = logging.getLogger("launcher.ec2")

AWS_POOL, AWS_WORKERS = "aws", 2   # the reactor's worker pool for boto3 calls
BROKEN_COOLDOWN = 30.0     # after a permanent run_instances error, refuse launches this long
POLL_BACKOFF_CAP = 60.0    # longest pause between describe calls while they fail


@dataclass(eq=False)
class _Launch:
    """One server's run_instances, across its retries."""
    record: Instance            # its LAUNCHING record in the table
    params: dict
    started: float
    attempts: int = 0
    in_flight: bool = False
    timer: object = None

    @property
    def server_id(self):
        return self.record.server_id


class Ec2Launcher:
    """launch / terminate / close / on_exit / launch_deadline, like LocalLauncher."""

    name = "ec2"

    def __init__(self, reactor, config, client_factory=None, clock=None):
        self.reactor, self.config = reactor, config
        self.clock = clock or reactor.clock
        self.launch_deadline = config.launch_deadline
        self.on_exit = None                        # callback(server_id, reason), set by the wiring
        self.session = secrets.token_hex(8)        # np-social:launcher tag of this process
        self.table = Table(config.cluster, self.session, started_wall=time.time())
        self.attempts = {}                         # server id -> _Launch (run_instances not done)
        self._client_factory = client_factory or self._default_client
        self._client = None
        self._client_lock = threading.Lock()
        self._queue = collections.deque()          # AWS calls waiting for a pool thread
        self._busy = 0
        reactor.add_pool(AWS_POOL, AWS_WORKERS)
        self._max_busy = reactor.pool_size(AWS_POOL)
        # shared with pool threads: run_instances in flight, and what they created
        self._cond = threading.Condition()
        self._inflight_launches = 0
        self._landed = {}                          # server_id -> instance_id, until the loop knows
        self._closed = False
        self._poll_timer = None
        self._polling = False
        self._poll_failures = 0
        self._broken_until, self._broken_reason = 0.0, ""

    # -- views of the table (tests, logs) ---------------------------------------
    @property
    def instances(self):
        """server id -> RUNNING record."""
        return {sid: rec for sid, rec in self.table.servers.items() if rec.state is State.RUNNING}

    @property
    def terminating(self):
        return {iid for iid, rec in self.table.instances.items() if rec.state is State.TERMINATING}

    @property
    def terminated(self):
        return {iid for iid, rec in self.table.instances.items() if rec.state is State.TERMINATED}

    # -- boto3, off the loop ----------------------------------------------------
    def _default_client(self):
        import boto3
        from botocore.config import Config
        cfg = Config(connect_timeout=5, read_timeout=20,
                     retries={"mode": "standard", "total_max_attempts": 1},  # we retry on the loop
                     user_agent_extra="np-social")
        return boto3.session.Session(region_name=self.config.region).client("ec2", config=cfg)

    def client(self):
        """The EC2 client, created on first use (in a pool thread: building it
        resolves credentials, which may mean a network round trip)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _call(self, fn, *args, done):
        """Run blocking `fn(*args)` on the AWS pool, at most `_max_busy` at a
        time; `done(result, error)` runs on the loop."""
        self._queue.append((fn, args, done))
        self._pump()

    def _pump(self):
        while self._queue and self._busy < self._max_busy and not self._closed:
            fn, args, done = self._queue.popleft()
            self._busy += 1

            def finished(result, error, done=done):
                self._busy -= 1
                try:
                    done(result, error)
                finally:
                    self._pump()
            self.reactor.run_in_thread(fn, *args, done=finished, pool=AWS_POOL)

    # -- launch -----------------------------------------------------------------
    def run_params(self, server_id, secret):
        return run_params(self.config, server_id, secret, self.session)

    def launch(self, server_id, secret):
        """Start an instance for `server_id` (returns at once; the instance
        registers with the secret when it has booted)."""
        if self._closed:
            raise RuntimeError("the EC2 launcher is closed")
        now = self.clock()
        if now < self._broken_until:
            raise RuntimeError(self._broken_reason)
        params = self.run_params(server_id, secret)
        attempt = _Launch(self.table.launch(server_id, now), params, started=now)
        self.attempts[server_id] = attempt
        log.info("%s: run_instances %s %s (cluster %s)", server_id, self.config.ami,
                 self.config.instance_type, self.config.cluster)
        self._submit(attempt)

    def _submit(self, attempt):
        attempt.timer = None
        if attempt.record.cancelled or self._closed:
            self._drop_launch(attempt)
            return
        attempt.in_flight = True
        self._call(self._run_instance, attempt,
                   done=lambda result, error: self._launched(attempt, result, error))

    def _drop_launch(self, attempt):
        self.attempts.pop(attempt.server_id, None)
        self.table.launch_failed(attempt.server_id)

    def _run_instance(self, attempt):                         # pool thread
        with self._cond:
            self._inflight_launches += 1
        try:
            if attempt.record.cancelled:   # terminated while queued (a bool set on the loop)
                return None
            response = self.client().run_instances(**attempt.params)
            instance_id = response["Instances"][0]["InstanceId"]
            with self._cond:
                self._landed[attempt.server_id] = instance_id
            return instance_id
        finally:
            with self._cond:
                self._inflight_launches -= 1
                self._cond.notify_all()

    def _launched(self, attempt, instance_id, error):
        attempt.in_flight = False
        sid = attempt.server_id
        if self._closed:
            return                         # close() has taken what landed
        now = self.clock()
        if error is None:
            with self._cond:
                self._landed.pop(sid, None)
            if instance_id is None:        # cancelled before it reached AWS
                self._drop_launch(attempt)
                return
            self.attempts.pop(sid, None)
            self._broken_until = 0.0
            rec = self.table.launched(sid, instance_id, now)
            if rec.state is State.TERMINATING:
                log.info("%s: %s started after its launch was cancelled; terminating it", sid, instance_id)
                self._send_terminate(rec)
            else:
                log.info("%s: instance %s pending (attempt %d)", sid, instance_id, attempt.attempts + 1)
            return
        if attempt.record.cancelled:
            self._drop_launch(attempt)
            return
        delay = backoff(attempt.attempts)
        if is_transient(error) and now + delay - attempt.started < self.launch_deadline:
            attempt.attempts += 1
            log.warning("%s: run_instances: %s; retry %d in %.1f s", sid, describe_error(error),
                        attempt.attempts, delay)
            attempt.timer = self.reactor.call_later(delay, self._submit, attempt)
            return
        self._drop_launch(attempt)
        reason = f"run_instances failed: {describe_error(error)}"
        log.error("%s: %s", sid, reason)
        if not is_transient(error):
            # e.g. a wrong AMI or missing permission: do not hammer AWS with
            # launches that cannot succeed; fleet.launch answers this at once.
            self._broken_until = now + BROKEN_COOLDOWN
            self._broken_reason = reason
        if self.on_exit:
            self.on_exit(sid, reason)

    # -- terminate --------------------------------------------------------------
    def terminate(self, server_id):
        """Stop `server_id`'s instance (also while its run_instances is still
        under way: the instance is then terminated as soon as it exists)."""
        attempt = self.attempts.get(server_id)
        if attempt is not None:
            self.table.cancel(server_id, self.clock())
            if not attempt.in_flight:       # waiting for a retry: just drop it
                if attempt.timer:
                    attempt.timer.cancel()
                self._drop_launch(attempt)
            log.info("%s: launch cancelled", server_id)
            return
        rec = self.table.cancel(server_id, self.clock())
        if rec is not None:
            self._send_terminate(rec)

    def _send_terminate(self, rec, attempt=0):
        if self._closed or rec.state is not State.TERMINATING:
            return          # close() takes it from here, or it is already done
        if attempt == 0:
            log.info("%s: terminating %s", rec.server_id, rec.instance_id)
        self._call(self._terminate_blocking, [rec.instance_id],
                   done=lambda result, error: self._terminated(rec, attempt, error))

    def _terminate_blocking(self, instance_ids):            # pool thread
        return self.client().terminate_instances(InstanceIds=list(instance_ids))

    def _terminated(self, rec, attempt, error):
        now = self.clock()
        if error is None:
            self.table.terminate_done(rec.instance_id, now)
            return
        if self._closed:
            return
        young = rec.launched is not None and now - rec.launched < NOT_FOUND_GRACE
        retry = is_transient(error) or (is_not_found(error) and young)
        if retry and attempt < TERMINATE_ATTEMPTS:
            delay = backoff(attempt)
            log.warning("%s: terminate %s: %s; retry in %.1f s", rec.server_id, rec.instance_id,
                        describe_error(error), delay)
            self.reactor.call_later(delay, self._send_terminate, rec, attempt + 1)
            return
        if is_not_found(error):
            self.table.forget(rec.instance_id)
            return
        # It stays TERMINATING: the poll asks again once the request is stale.
        log.error("%s: terminate %s failed: %s", rec.server_id, rec.instance_id, describe_error(error))

    # -- polling ----------------------------------------------------------------
    def start(self):
        """First poll now (it terminates orphans of an earlier run), then every
        `poll_interval` seconds."""
        log.info("EC2 launcher: cluster %s, session %s, ami %s, instances join %s:%d",
                 self.config.cluster, self.session, self.config.ami, *self.config.login_address)
        self._poll()

    def _poll(self):
        self._poll_timer = None
        if self._closed:
            return
        if self._polling:
            self._schedule_poll()
            return
        self._polling = True
        started = self.clock()
        self._call(self._describe_cluster, done=lambda result, error: self._polled(started, result, error))

    def _schedule_poll(self):
        if self._closed:
            return
        interval = self.config.poll_interval
        if self._poll_failures:
            interval = min(POLL_BACKOFF_CAP, interval * 2 ** min(self._poll_failures, 4))
        self._poll_timer = self.reactor.call_later(interval, self._poll)

    def _describe_cluster(self, states=None, session=None):   # pool thread
        filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.config.cluster]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        if session:
            filters.append({"Name": f"tag:{TAG_LAUNCHER}", "Values": [session]})
        found = []
        paginator = self.client().get_paginator("describe_instances")
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", ()):
                found += [Seen.from_aws(inst) for inst in reservation.get("Instances", ())]
        return found

    def _polled(self, started, found, error):
        self._polling = False
        if self._closed:
            return
        if error is not None:
            self._poll_failures += 1
            log.warning("describe_instances: %s", describe_error(error))
            self._schedule_poll()
            return
        self._poll_failures = 0
        with self._cond:
            landed = set(self._landed.values())
        plan = self.table.reconcile(found, started, self.clock(), landed)
        self._schedule_poll()
        for rec, why in plan.terminate:
            if why in ("stray", "orphan"):
                log.warning("terminating %s %s (%s) of cluster %s", why, rec.instance_id,
                            rec.server_id, self.config.cluster)
            else:
                log.warning("%s: terminating %s (%s)", rec.server_id, rec.instance_id, why)
            self._send_terminate(rec)
        for item in plan.foreign:
            log.error("instance %s of cluster %s was launched by another live login server; "
                      "leaving it alone (give each login server its own --cluster)",
                      item.id, self.config.cluster)
        for sid, reason in plan.exits:
            log.warning("%s: %s", sid, reason)
            if self.on_exit:
                self.on_exit(sid, reason)

    # -- shutdown ---------------------------------------------------------------
    def close(self, timeout=30.0):
        """Terminate every instance of this login server. The work runs in one
        worker call (with its retries); the loop waits for it at most
        `timeout` s: at shutdown nothing else is served any more."""
        if self._closed:
            return
        self._closed = True
        if self._poll_timer:
            self._poll_timer.cancel()
        for attempt in self.attempts.values():
            attempt.record.cancelled = True
            if attempt.timer:
                attempt.timer.cancel()
        ids = self.table.ids_to_terminate()
        deadline = time.monotonic() + timeout
        result = Future()

        def clean_up():                                      # pool thread
            try:
                result.set_result(self._close_blocking(ids, deadline))
            except BaseException as e:
                result.set_exception(e)
        self.reactor.run_in_thread(clean_up, pool=AWS_POOL)
        try:
            result.result(timeout)
        except FutureTimeout:
            log.error("close: AWS did not answer within %.0f s; instances of cluster %s may be left "
                      "running (the next start terminates them as orphans)", timeout, self.config.cluster)
        except Exception as e:
            log.error("close: %s", describe_error(e))
        self.table.clear()
        self.attempts.clear()

    def _close_blocking(self, ids, deadline):                 # pool thread
        # A run_instances under way may still create an instance: let it return.
        with self._cond:
            self._cond.wait_for(lambda: self._inflight_launches == 0,
                                timeout=max(0.0, (deadline - time.monotonic()) / 2))
            ids = set(ids) | set(self._landed.values())
        try:
            # also strays; an instance terminated just now may still look
            # active here, terminating it again is harmless
            ids |= {item.id for item in self._describe_cluster(ACTIVE_STATES, self.session)}
        except Exception as e:
            log.warning("close: describe_instances: %s", describe_error(e))
        return terminate_all(self._terminate_blocking, ids, deadline, self.config.cluster)
