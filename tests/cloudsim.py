"""A pretend EC2 cloud for tests: moto keeps the API state, this runs the "instances".

`CloudSim(endpoint, cluster)` polls moto (boto3, in a thread of the test
process) for `running` instances tagged `np-social:cluster=<cluster>`, fetches
each one's user-data (`describe_instance_attribute`, base64: the launcher's
lib/fleet/launchers/ec2/userdata.sh.in, filled in) and runs it with `bash`
on this machine, as the image's cloud-init would, with

  NP_HOME=<this repository>   NP_ADVERTISE=127.0.0.1
  NP_PYTHON=<sys.executable>  NP_APP_PORT=0 (many "instances" share one host)

so the script never asks the metadata service. When moto says an instance is
shutting-down or terminated, its process group is killed. `stop()` kills
everything. With `terminate_on_exit=True` an instance whose script ends is
terminated in moto, like the real image (shutdown behaviour "terminate").

Only 127.0.0.1 is ever contacted: the endpoint must be a loopback URL.
"""
import base64
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlparse

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG_CLUSTER = "np-social:cluster"

log = logging.getLogger("cloudsim")


def ec2_client(endpoint):
    host = urlparse(endpoint).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"cloudsim talks to loopback only, not {endpoint}")
    return boto3.session.Session().client(
        "ec2", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing")


class Instance:
    def __init__(self, instance_id, proc, log_path):
        self.id, self.proc, self.log_path = instance_id, proc, log_path
        self.killed = False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class CloudSim:
    def __init__(self, endpoint, cluster, interval=0.2, terminate_on_exit=False, env=None):
        self.endpoint, self.cluster, self.interval = endpoint, cluster, interval
        self.terminate_on_exit = terminate_on_exit
        self.client = ec2_client(endpoint)
        self.instances = {}          # instance id -> Instance (also those whose script ended)
        self.errors = []
        self._dir = tempfile.mkdtemp(prefix="cloudsim-")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._env = dict(os.environ)
        for key in list(self._env):   # an "instance" has no AWS credentials of ours
            if key.startswith("AWS_"):
                del self._env[key]
        self._env.update(NP_HOME=ROOT, NP_ADVERTISE="127.0.0.1", NP_PYTHON=sys.executable,
                         NP_APP_PORT="0", PYTHONUNBUFFERED="1", AWS_EC2_METADATA_DISABLED="true")
        self._env.update(env or {})
        self._thread = None

    # -- lifecycle --------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="cloudsim", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Stop polling and kill every process still running."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        with self._lock:
            instances = list(self.instances.values())
        for inst in instances:
            self._kill(inst)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:   # keep simulating; the test decides what matters
                self.errors.append(repr(e))
                log.warning("cloudsim: %r", e)
            self._stop.wait(self.interval)

    # -- one pass ---------------------------------------------------------------
    def describe(self):
        """{instance id: (state, tags)} of the cluster, every state."""
        out = {}
        paginator = self.client.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    out[inst["InstanceId"]] = (inst["State"]["Name"],
                                               {t["Key"]: t["Value"] for t in inst.get("Tags", ())})
        return out

    def step(self):
        for instance_id, (state, _tags) in self.describe().items():
            with self._lock:
                inst = self.instances.get(instance_id)
            if state == "running" and inst is None:
                self._boot(instance_id)
            elif state in ("shutting-down", "terminated", "stopping", "stopped") and inst is not None:
                self._kill(inst)
            elif state == "running" and inst is not None and self.terminate_on_exit \
                    and inst.proc is not None and not inst.alive() and not inst.killed:
                inst.killed = True
                self.client.terminate_instances(InstanceIds=[instance_id])

    def _boot(self, instance_id):
        attr = self.client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        encoded = (attr.get("UserData") or {}).get("Value")
        log_path = os.path.join(self._dir, f"{instance_id}.log")
        if not encoded:   # an instance without user-data: it runs nothing
            with self._lock:
                self.instances[instance_id] = Instance(instance_id, None, log_path)
            return
        script = os.path.join(self._dir, f"{instance_id}.sh")
        with open(script, "wb") as f:
            f.write(base64.b64decode(encoded))
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(["bash", script], cwd=self._dir, env=self._env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        with self._lock:
            self.instances[instance_id] = Instance(instance_id, proc, log_path)
        log.info("cloudsim: booted %s (pid %d)", instance_id, proc.pid)

    def _kill(self, inst, grace=3.0):
        inst.killed = True
        proc = inst.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    # -- for assertions ---------------------------------------------------------
    def running_processes(self):
        """Instance ids whose script (or anything in its process group) still runs."""
        with self._lock:
            instances = list(self.instances.values())
        alive = []
        for inst in instances:
            if inst.proc is None:
                continue
            if inst.alive() or _group_alive(inst.proc.pid):
                alive.append(inst.id)
        return alive

    def wait_for(self, predicate, timeout, step=0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(step)
        return predicate()


def _group_alive(pgid):
    """Is any process of group `pgid` alive (zombies waiting for a late reaper do not count)?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()   # after "pid (comm) "
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
