"""The last thing the EC2 launcher does: terminate every instance of this
login server, in one blocking call that runs in a worker thread (the loop
only waits on its future) and retries until a deadline."""
import logging
import time

from lib.fleet.launchers.ec2.errors import backoff, describe_error, is_not_found, is_transient

log = logging.getLogger("launcher.ec2")

TERMINATE_BATCH = 500      # instance ids per terminate_instances call


def terminate_all(terminate, ids, deadline, cluster, sleep=None, clock=time.monotonic):
    """Call `terminate(list of ids)` (terminate_instances; raises on error)
    for `ids` until it succeeds or `deadline` (of `clock`) would pass:
    throttling, AWS trouble and NotFound are retried with backoff; one unknown
    id fails a whole call, so after a NotFound the ids go one by one and those
    AWS does not know are dropped. Returns the ids terminated. `sleep`
    (default time.sleep) waits between tries: this runs in a worker thread."""
    sleep = sleep or time.sleep
    ids, attempt = sorted(ids), 0
    while ids:
        try:
            for i in range(0, len(ids), TERMINATE_BATCH):
                terminate(ids[i:i + TERMINATE_BATCH])
            log.info("terminated %d instance(s) of cluster %s: %s", len(ids), cluster, " ".join(ids))
            return ids
        except Exception as e:
            if is_not_found(e) and len(ids) > 1:
                ids = [iid for iid in ids if _still_there(terminate, iid)]
            elif not (is_transient(e) or is_not_found(e)):
                log.error("close: could not terminate %s: %s", " ".join(ids), describe_error(e))
                return []
            delay = backoff(attempt)
            attempt += 1
            if ids and clock() + delay > deadline:
                log.error("close: gave up terminating %s: %s", " ".join(ids), describe_error(e))
                return []
            if ids:
                sleep(delay)
    return ids


def _still_there(terminate, instance_id):
    """Terminate one id; True when it still needs terminating (a transient error)."""
    try:
        terminate([instance_id])
        return False
    except Exception as e:
        return is_transient(e)
