"""The EC2 launcher's book of instances and its reconcile step, without I/O.

Every instance the launcher deals with has one record in `Table`, in one of
these states:

    LAUNCHING ──run_instances returned──> RUNNING ──fleet terminates──> TERMINATING
        │  (cancelled by the fleet meanwhile: straight to TERMINATING)        │ terminate_instances
        └──run_instances failed──> GONE                                       ▼ acknowledged
    RUNNING ──AWS: terminated / shutting-down / vanished──> GONE          TERMINATED
    RUNNING ──AWS: stopping / stopped──> TERMINATING                          │
    TERMINATING, TERMINATED ──AWS: shutting-down / terminated / vanished──> GONE

LAUNCHING and RUNNING records serve one of the fleet's servers (`servers`,
by server id); every record with an instance id is also in `instances`. GONE
records are dropped.

`Table.reconcile(found, started, now)` compares the book with one
`describe_instances` of the cluster (`found`: `Seen` items; `started`: when
that call was made) and returns a `Plan`: which servers exited (to report to
the fleet, once each) and which instances to terminate. Its rules:

 1. Ours gone: a RUNNING instance AWS reports shutting-down or terminated, or
    stopping/stopped (then also terminated), is an exit. One missing from the
    answer is an exit only if it was launched NOT_FOUND_GRACE before the call
    started (describe lags behind run_instances).
 2. Another cluster's instance is never touched (describe is filtered on the
    cluster tag; this is the second lock).
 3. Instances we asked to terminate: forgotten once AWS reports them
    shutting-down or terminated, or no longer lists them NOT_FOUND_GRACE after
    the request; asked again if still active NOT_FOUND_GRACE after it.
 4. Strays: active instances tagged with this process's session that no
    record serves (and whose run_instances is not still under way, nor has
    just returned in a worker thread: `landed`) are terminated.
 5. Orphans: active instances of the cluster tagged by another process and
    launched before this one started (ORPHAN_SKEW for clock skew) are
    terminated: a crash, a kill -9 left them.
 6. Foreign: the same, launched after this process started: another live
    login server shares the cluster name. Left alone; reported once.
"""
import datetime
import enum
from dataclasses import dataclass, field

from lib.fleet.launchers.ec2.options import TAG_CLUSTER, TAG_LAUNCHER, TAG_SERVER

ACTIVE_STATES = ("pending", "running", "stopping", "stopped")   # an instance that costs money
SERVING_STATES = ("pending", "running")
NOT_FOUND_GRACE = 60.0     # how long AWS may not know an instance run_instances returned, or may
                           # still list one terminate_instances was asked to stop
ORPHAN_SKEW = 30.0         # instances launched up to this long after our start still count as
                           # orphans (clock skew between us and AWS)


class State(enum.Enum):
    LAUNCHING = "launching"        # run_instances under way (or waiting for a retry): no id yet
    RUNNING = "running"            # serving a fleet server, pending or running as far as we know
    TERMINATING = "terminating"    # terminate_instances asked (or to be asked again)
    TERMINATED = "terminated"      # terminate_instances acknowledged; AWS may still list it a while
    GONE = "gone"                  # nothing left to do: the record is dropped


@dataclass(eq=False)
class Instance:
    server_id: str                 # the fleet's id (the tag's value, or "?", for orphans and strays)
    state: State
    since: float                   # when it entered `state` (the launcher's monotonic clock)
    instance_id: str = None        # None while LAUNCHING
    launched: float = None         # when run_instances returned; None: long ago (orphans, strays)
    cancelled: bool = False        # LAUNCHING: the fleet gave up; terminate it once it exists


@dataclass(frozen=True)
class Seen:
    """One instance in a describe_instances answer."""
    id: str
    state: str
    reason: str = ""
    launch_time: datetime.datetime = None
    tags: dict = field(default_factory=dict)

    @classmethod
    def from_aws(cls, inst):
        return cls(id=inst["InstanceId"], state=inst["State"]["Name"],
                   reason=(inst.get("StateReason") or {}).get("Message", ""),
                   launch_time=inst.get("LaunchTime"),
                   tags={t["Key"]: t["Value"] for t in inst.get("Tags", ())})


@dataclass
class Plan:
    exits: list = field(default_factory=list)       # [(server_id, reason)] for the fleet
    terminate: list = field(default_factory=list)   # [(Instance, why)]: now TERMINATING, to be asked
    foreign: list = field(default_factory=list)     # [Seen]: another live login server's, left alone


class Table:
    def __init__(self, cluster, session, started_wall):
        self.cluster = cluster
        self.session = session                # the np-social:launcher tag of this process
        self.started_wall = started_wall      # time.time() when this process started
        self.servers = {}                     # server id -> Instance (LAUNCHING, RUNNING)
        self.instances = {}                   # instance id -> Instance (all but LAUNCHING)
        self._reported_foreign = set()

    # -- transitions driven by the launcher's own calls -------------------------
    def launch(self, server_id, now):
        if server_id in self.servers:
            raise ValueError(f"{server_id} is already {self.servers[server_id].state.value}")
        rec = self.servers[server_id] = Instance(server_id, State.LAUNCHING, now)
        return rec

    def launched(self, server_id, instance_id, now):
        """run_instances returned `instance_id`: RUNNING, or TERMINATING when
        the fleet gave the server up meanwhile (the caller then terminates it)."""
        rec = self.servers.pop(server_id, None)
        if rec is None or rec.state is not State.LAUNCHING:
            rec = Instance(server_id, State.LAUNCHING, now, cancelled=True)
        rec.instance_id, rec.launched, rec.since = instance_id, now, now
        if rec.cancelled:
            rec.state = State.TERMINATING
        else:
            rec.state = State.RUNNING
            self.servers[server_id] = rec
        self.instances[instance_id] = rec
        return rec

    def launch_failed(self, server_id):
        """run_instances failed for good, or was dropped before it reached AWS."""
        rec = self.servers.get(server_id)
        if rec is not None and rec.state is State.LAUNCHING:
            del self.servers[server_id]
            rec.state = State.GONE

    def cancel(self, server_id, now):
        """The fleet terminates `server_id`: a LAUNCHING record is marked
        cancelled (its instance is terminated once it exists); a RUNNING one
        becomes TERMINATING and is returned (the caller asks AWS)."""
        rec = self.servers.get(server_id)
        if rec is None:
            return None
        if rec.state is State.LAUNCHING:
            rec.cancelled = True
            return None
        del self.servers[server_id]
        rec.state, rec.since = State.TERMINATING, now
        return rec

    def terminate_done(self, instance_id, now):
        rec = self.instances.get(instance_id)
        if rec is not None and rec.state is State.TERMINATING:
            rec.state, rec.since = State.TERMINATED, now

    def forget(self, instance_id):
        """AWS does not know `instance_id` (any more): nothing to terminate."""
        rec = self.instances.get(instance_id)
        if rec is not None and rec.state in (State.TERMINATING, State.TERMINATED):
            del self.instances[instance_id]
            rec.state = State.GONE

    def ids_to_terminate(self):
        """Instances to terminate at shutdown: RUNNING and TERMINATING ones."""
        return {iid for iid, rec in self.instances.items()
                if rec.state in (State.RUNNING, State.TERMINATING)}

    def clear(self):
        for rec in list(self.servers.values()) + list(self.instances.values()):
            rec.state = State.GONE
        self.servers.clear()
        self.instances.clear()

    # -- reconcile with what AWS reports -----------------------------------------
    def reconcile(self, found, started, now, landed=()):
        """Apply one describe_instances answer (`found`: Seen items of the
        cluster, asked at `started`) at `now`; `landed`: instance ids whose
        run_instances has returned in a worker but not yet on the loop."""
        plan = Plan()
        by_id = {item.id: item for item in found}
        self._ours_gone(plan, by_id, started, now)
        self._asked_before(plan, by_id, started, now)
        for item in found:
            self._unknown(plan, item, now, landed)
        return plan

    def _ours_gone(self, plan, by_id, started, now):              # rule 1
        for sid, rec in list(self.servers.items()):
            if rec.state is not State.RUNNING:
                continue
            item = by_id.get(rec.instance_id)
            if item is not None and item.tags.get(TAG_CLUSTER) != self.cluster:
                item = None   # rule 2: not an answer about our instance
            if item is not None and item.state in SERVING_STATES:
                continue
            if item is not None:
                reason = f"instance {rec.instance_id} is {item.state}"
                if item.reason:
                    reason += f" ({item.reason})"
            elif rec.launched < started - NOT_FOUND_GRACE:
                reason = f"instance {rec.instance_id} no longer exists"
            else:
                continue      # just launched: describe may not show it yet
            del self.servers[sid]
            plan.exits.append((sid, reason))
            if item is not None and item.state in ACTIVE_STATES:   # stopping, stopped
                rec.state, rec.since = State.TERMINATING, now
                plan.terminate.append((rec, item.state))
            else:
                del self.instances[rec.instance_id]
                rec.state = State.GONE

    def _asked_before(self, plan, by_id, started, now):           # rule 3
        for iid, rec in list(self.instances.items()):
            if rec.state not in (State.TERMINATING, State.TERMINATED):
                continue
            item = by_id.get(iid)
            if item is not None and item.tags.get(TAG_CLUSTER) != self.cluster:
                item = None
            if item is None:
                if rec.since < started - NOT_FOUND_GRACE:
                    self.forget(iid)
            elif item.state not in ACTIVE_STATES:
                self.forget(iid)
            elif now - rec.since >= NOT_FOUND_GRACE:
                rec.state, rec.since = State.TERMINATING, now
                plan.terminate.append((rec, f"still {item.state}"))

    def _unknown(self, plan, item, now, landed):                  # rules 2, 4, 5, 6
        tags = item.tags
        if tags.get(TAG_CLUSTER) != self.cluster or item.state not in ACTIVE_STATES:
            return
        if item.id in self.instances or item.id in landed:
            return
        sid = tags.get(TAG_SERVER, "?")
        if tags.get(TAG_LAUNCHER) == self.session:
            launching = self.servers.get(sid)
            if launching is not None and launching.state is State.LAUNCHING:
                return        # its run_instances has not returned yet
            why = "stray"
        elif self.launched_before_us(item.launch_time):
            why = "orphan"
        else:
            if item.id not in self._reported_foreign:
                self._reported_foreign.add(item.id)
                plan.foreign.append(item)
            return
        rec = self.instances[item.id] = Instance(sid, State.TERMINATING, now, instance_id=item.id)
        plan.terminate.append((rec, why))

    def launched_before_us(self, launch_time):
        if not isinstance(launch_time, datetime.datetime):
            return True
        if launch_time.tzinfo is None:
            launch_time = launch_time.replace(tzinfo=datetime.timezone.utc)
        return launch_time.timestamp() < self.started_wall + ORPHAN_SKEW
