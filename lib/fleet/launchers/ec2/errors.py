"""What an AWS error means for the launcher: retry it, wait for it, or give up;
and how long to wait before the next try."""
import random

# ClientError codes worth retrying (throttling, capacity, AWS-side trouble).
TRANSIENT_CODES = frozenset((
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "SlowDown",
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity", "InternalError", "InternalFailure", "ServiceUnavailable",
    "Unavailable", "RequestTimeout", "RequestTimeoutException", "EC2ThrottledException",
))
# Right after run_instances AWS may not know the id yet (eventual consistency).
NOT_FOUND_CODES = frozenset(("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"))

BACKOFF_BASE, BACKOFF_CAP = 0.5, 20.0
TERMINATE_ATTEMPTS = 12      # tries of one terminate_instances before the poll takes over


def error_code(err):
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code", "") or ""
    return ""


def is_not_found(err):
    return error_code(err) in NOT_FOUND_CODES


def is_transient(err):
    """Worth retrying: throttling, capacity, AWS 5xx, connection trouble."""
    try:
        from botocore import exceptions as bx
    except ImportError:
        return False
    if isinstance(err, (bx.ConnectionError, bx.HTTPClientError)):
        return True
    if isinstance(err, bx.ClientError):
        if error_code(err) in TRANSIENT_CODES:
            return True
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500
    return False


def describe_error(err):
    code = error_code(err)
    if code:
        message = err.response.get("Error", {}).get("Message", "")
        return f"{code}: {message}" if message else code
    return f"{type(err).__name__}: {err}"


def backoff(attempt):
    """Exponential backoff with jitter: ~0.5, 1, 2, 4 ... s, capped at 20 s."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * random.uniform(0.5, 1.0)
