"""Bounded data: the quotas a write must fit and the cap on list replies
(docs/protocol.md §4; the limits are `ctx.limits`, lib/social/limits.py).

A quota is checked after every other check of its command (`refusal`,
called by commands.handle), so a request that would fail anyway keeps its
course reply; over a quota the reply is status 1 and nothing is written.
A list reply carries at most `max_list_items` items, plus a `note` the
client prints after them, so every reply is of a bounded size. The strings
are exact.
"""
from lib.social.protocol import fail, listing

POST_TOO_LONG = "Post too long: at most {n} characters"
MESSAGE_TOO_LONG = "Message too long: at most {n} characters"
TOO_MANY_GROUPS = "Too many groups: at most {n}"
TOO_MANY_JOINED = "You are in too many groups: at most {n}"

# The note of a list reply that was cut; the items kept are the last in the
# list's order (the newest, except for list-friend's two runs).
CUT = {
    "invite": "(only the last {n} of {total} invitations shown)",
    "friend": "(only the last {n} of {total} friends shown)",
    "group": "(only the last {n} of {total} groups shown)",
    "post": "(only {n} of {total} posts shown: the newest of each friend)",
}


def refusal(command, state, me, args, limits):
    """The failure when a request that passed its command's checks is over
    a quota, else None (`args`: the words after the token)."""
    check = _QUOTAS.get(command)
    return check(state, me, args, limits) if check else None


def _message(template, skip):
    """The check that a message (the words after the first `skip`) has at
    most `max_post_length` characters."""
    def check(state, me, args, limits):
        n = limits.max_post_length
        return fail(template.format(n=n)) if len(" ".join(args[skip:])) > n else None
    return check


def _one_more_group(creating):
    """The check that `me` may create (max_groups, then max_groups_per_user)
    or join (max_groups_per_user) one more group."""
    def check(state, me, args, limits):
        if creating and len(state.groups) >= limits.max_groups:
            return fail(TOO_MANY_GROUPS.format(n=limits.max_groups))
        if len(state.users[me].joined) >= limits.max_groups_per_user:
            return fail(TOO_MANY_JOINED.format(n=limits.max_groups_per_user))
        return None
    return check


# command -> its quota check, (state, me, args, limits) -> failure or None
_QUOTAS = {
    "post": _message(POST_TOO_LONG, skip=0),
    "send": _message(MESSAGE_TOO_LONG, skip=1),
    "send-group": _message(MESSAGE_TOO_LONG, skip=1),
    "create-group": _one_more_group(creating=True),
    "join-group": _one_more_group(creating=False),
}
QUOTAED = frozenset(_QUOTAS)   # the commands `refusal` has a check for


def capped(key, items, limits):
    """A list reply of the last `max_list_items` of `items`, noted if cut."""
    items, n = list(items), limits.max_list_items
    if len(items) <= n:
        return listing(key, items)
    return _noted(listing(key, items[-n:]), key, n, len(items))


def newest_posts(by_friend, limits):
    """receive-post's reply from [(friend, posts oldest first)] in list-friend
    order. Over `max_list_items` in all, each friend keeps an equal share of
    their newest posts (a friend with fewer leaves the rest to the others),
    so no chatty friend crowds out the others; the order stays the same."""
    counts = [len(posts) for _, posts in by_friend]
    n, total = limits.max_list_items, sum(counts)
    shares = counts if total <= n else fair_shares(counts, n)
    reply = listing("post", [{"id": friend, "message": message}
                             for (friend, posts), k in zip(by_friend, shares)
                             for message in posts[len(posts) - k:]])
    return reply if total <= n else _noted(reply, "post", n, total)


def fair_shares(counts, n):
    """Split `n` slots among wants `counts` (sum > n), max-min fair: each
    gets min(count, level) at the highest level that fits; the slots left
    over go one each to the first who want more."""
    low, high = 0, max(counts)
    while low < high:      # the level: sum(min(c, level)) <= n < sum(min(c, level + 1))
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sum(min(c, mid) for c in counts) <= n else (low, mid - 1)
    shares = [min(c, low) for c in counts]
    spare = n - sum(shares)
    for i, c in enumerate(counts):
        if spare and c > low:
            shares[i] += 1
            spare -= 1
    return shares


def _noted(reply, key, n, total):
    reply["note"] = CUT[key].format(n=n, total=total)
    return reply
