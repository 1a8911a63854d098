"""Command semantics: pure functions of (state, request) -> Outcome.

`State` is the in-memory model of every account and all social data. A
handler never mutates it: it returns the reply and a list of *mutations*
(plain tuples); `apply()` is the only code that changes a State, and the
store journals exactly those tuples, so replaying the journal rebuilds the
same State. Effects the store cannot do (assigning an app server, ending a
session, publishing to the broker) are returned as `Outcome.effect`, one of
the dataclasses `Assign`, `Release`, `Publish`, `Join`, for the caller to complete.
Randomness (tokens, destinations) comes in through `Context` so tests are
deterministic.
"""
import hashlib
import secrets
from dataclasses import dataclass, field

from lib.accounts import names
from lib.social import protocol, quotas
from lib.social.limits import Limits
from lib.social.protocol import COMMANDS, NOT_LOGIN, Server, fail, ok


class User:
    """One account and everything tied to it. Ordered sets are dicts."""

    __slots__ = ("name", "password", "invites", "invited", "accepted_by_me",
                 "accepted_mine", "posts", "joined", "session")

    def __init__(self, name, password):
        self.name, self.password = name, password
        self.invites = {}         # inviter -> None, in invitation order
        self.invited = {}         # users I invited (pending)
        self.accepted_by_me = {}  # friends whose invitation I accepted, in that order
        self.accepted_mine = {}   # friends who accepted my invitation, in that order
        self.posts = []
        self.joined = {}          # groups, in the order I became a member
        self.session = None       # Session while logged in

    def friends(self):
        return list(self.accepted_by_me) + list(self.accepted_mine)

    def is_friend(self, other):
        return other in self.accepted_by_me or other in self.accepted_mine


@dataclass
class Session:
    user: str
    digest: str               # sha256 of the token; the token itself is never stored
    queue: str                # this login's personal broker queue


@dataclass
class Group:
    name: str
    topic: str
    members: dict = field(default_factory=dict)


class State:
    def __init__(self):
        self.users = {}       # name -> User
        self.groups = {}      # name -> Group, in creation order
        self.sessions = {}    # token digest -> Session

    def user_for_token(self, token):
        if not token:
            return None
        # token_digest, inline: this runs on every token request
        session = self.sessions.get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest())
        return session.user if session else None


def token_digest(token):
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class Context:
    """What handlers take from outside: sources of randomness (replaced in
    tests) and the limits in force (lib/social/limits.py)."""

    def __init__(self, limits=None):
        self.limits = limits or Limits()

    def new_token(self):
        return secrets.token_urlsafe(16)          # 128 bits

    def new_queue(self):
        return "/queue/np.u." + secrets.token_hex(16)

    def new_topic(self):
        return "/topic/np.g." + secrets.token_hex(16)


# -- effects: what the caller must do besides recording the mutations --------------
@dataclass(frozen=True)
class Assign:
    """`user` needs an application server before the reply leaves (login, locate)."""
    user: str


@dataclass(frozen=True)
class Release:
    """`user`'s session ended (logout, delete): free its app-server slot and
    forget its token; `forget_password` also drops the remembered password
    (the account is gone)."""
    user: str
    forget_password: bool = False


@dataclass(frozen=True)
class Publish:
    """Publish `body` to the broker `destination` before the reply leaves (send, send-group)."""
    destination: str
    body: str
    persistent: bool


@dataclass(frozen=True)
class Join:
    """`user` became a member of `group`: its app server subscribes to the
    group's `topic` before the reply leaves (create-group, join-group)."""
    user: str
    group: str
    topic: str


@dataclass
class Outcome:
    reply: dict
    mutations: list = field(default_factory=list)
    effect: object = None     # Assign | Release | Publish | Join | None


# -- mutations: the only code that changes a State ------------------------------
def _m_register(s, name, password):
    s.users[name] = User(name, password)


def _m_password(s, name, password):
    s.users[name].password = password


def _m_login(s, name, digest, queue):
    _m_logout(s, name)  # a rotated token replaces the old one
    session = Session(name, digest, queue)
    s.sessions[digest] = session
    s.users[name].session = session


def _m_logout(s, name):
    user = s.users.get(name)
    if user and user.session:
        s.sessions.pop(user.session.digest, None)
        user.session = None


def _m_delete(s, name):
    _m_logout(s, name)
    user = s.users.pop(name, None)
    if user is None:
        return
    for other in list(user.invites) + list(user.invited) + user.friends():
        o = s.users.get(other)
        if o:
            for rel in (o.invites, o.invited, o.accepted_by_me, o.accepted_mine):
                rel.pop(name, None)
    for group in user.joined:
        if group in s.groups:
            s.groups[group].members.pop(name, None)


def _m_invite(s, inviter, invitee):
    s.users[invitee].invites[inviter] = None
    s.users[inviter].invited[invitee] = None


def _m_accept(s, inviter, accepter):
    a, b = s.users[accepter], s.users[inviter]
    a.invites.pop(inviter, None)
    b.invited.pop(accepter, None)
    a.accepted_by_me[inviter] = None
    b.accepted_mine[accepter] = None


def _m_post(s, author, message, keep=None):
    # `keep` is max_posts_per_user when posted, journaled with the post (None
    # in records from before it), so a replay trims alike whatever the flags.
    posts = s.users[author].posts
    posts.append(message)
    if keep is not None and len(posts) > keep:
        del posts[:len(posts) - keep]


def _m_create_group(s, group, creator, topic):
    s.groups[group] = Group(group, topic)
    _m_join_group(s, group, creator)


def _m_join_group(s, group, name):
    s.groups[group].members[name] = None
    s.users[name].joined[group] = None


MUTATIONS = {
    "register": _m_register, "password": _m_password, "login": _m_login, "logout": _m_logout,
    "delete": _m_delete, "invite": _m_invite, "accept": _m_accept,
    "post": _m_post, "create_group": _m_create_group, "join_group": _m_join_group,
}


def apply(state, mutation):
    MUTATIONS[mutation[0]](state, *mutation[1:])


# -- register and login: two phases around the (slow, off-loop) password hash --
def check_register(state, args):
    """Usage, the name rule, then `<id> is already used`; None means: hash
    and finish."""
    if len(args) != 2:
        return fail(COMMANDS["register"].usage)
    reason = names.check(args[0])
    if reason:
        return fail(f"Invalid username: {reason}")
    if args[0] in state.users:
        return fail(f"{args[0]} is already used")
    return None


def finish_register(state, name, stored_password):
    if name in state.users:  # registered by someone else while we hashed
        return Outcome(fail(f"{name} is already used"))
    return Outcome(ok(), [("register", name, stored_password)])


def check_login(state, args):
    """Usage, else (None, stored password or None when there is no such user)."""
    if len(args) != 2:
        return fail(COMMANDS["login"].usage), None
    user = state.users.get(args[0])
    return None, (user.password if user else None)


def finish_login(state, name, matched, ctx, known_token=None):
    """After verification. Logged in already: the same token again (the caller
    keeps issued tokens in memory as `known_token`, since only digests are
    stored); after a restart the plaintext is gone, so the session's token is
    rotated, keeping its queue. Otherwise a new session."""
    user = state.users.get(name)
    if not matched or user is None:
        return Outcome(fail("No such user or password error"))
    session = user.session
    if session and known_token:
        return Outcome(ok(token=known_token), effect=Assign(name))
    token = ctx.new_token()
    queue = session.queue if session else ctx.new_queue()
    return Outcome(ok(token=token), [("login", name, token_digest(token), queue)],
                   effect=Assign(name))


def subscriptions(state, name):
    """(personal queue, {group: topic}) an app server subscribes to for the
    logged-in user `name` (docs/protocol.md §7); None if not logged in."""
    user = state.users.get(name)
    if user is None or user.session is None:
        return None
    return user.session.queue, {g: state.groups[g].topic for g in user.joined}


# -- token commands ---------------------------------------------------------------
def _logout(state, me, args, ctx):
    return Outcome(ok("Bye!"), [("logout", me)], effect=Release(me))


def _delete(state, me, args, ctx):
    return Outcome(ok(), [("delete", me)], effect=Release(me, forget_password=True))


def _locate(state, me, args, ctx):
    return Outcome(ok("Your application server is ready"), effect=Assign(me))


def _invite(state, me, args, ctx):
    other = args[0]
    user = state.users[me]
    if other == me:
        return Outcome(fail("You cannot invite yourself"))
    if other not in state.users:
        return Outcome(fail(f"{other} does not exist"))
    if user.is_friend(other):
        return Outcome(fail(f"{other} is already your friend"))
    if other in user.invited:
        return Outcome(fail("Already invited"))
    if other in user.invites:
        return Outcome(fail(f"{other} has invited you"))
    return Outcome(ok(), [("invite", me, other)])


def _list_invite(state, me, args, ctx):
    return Outcome(quotas.capped("invite", state.users[me].invites, ctx.limits))


def _accept_invite(state, me, args, ctx):
    other = args[0]
    if other not in state.users[me].invites:
        return Outcome(fail(f"{other} did not invite you"))
    return Outcome(ok(), [("accept", other, me)])


def _list_friend(state, me, args, ctx):
    return Outcome(quotas.capped("friend", state.users[me].friends(), ctx.limits))


def _post(state, me, args, ctx):
    return Outcome(ok(), [("post", me, " ".join(args), ctx.limits.max_posts_per_user)])


def _receive_post(state, me, args, ctx):
    by_friend = [(friend, state.users[friend].posts) for friend in state.users[me].friends()]
    return Outcome(quotas.newest_posts(by_friend, ctx.limits))


def _send(state, me, args, ctx):
    friend, message = args[0], " ".join(args[1:])
    target = state.users.get(friend)
    if target is None:
        return Outcome(fail("No such user exist"))
    if not state.users[me].is_friend(friend):
        return Outcome(fail(f"{friend} is not your friend"))
    if target.session is None:
        return Outcome(fail(f"{friend} is not online"))
    body = protocol.chat_body(me, message, to=friend, recipients=[friend])
    return Outcome(ok(), effect=Publish(target.session.queue, body, True))


def _create_group(state, me, args, ctx):
    group = args[0]
    reason = names.check(group)
    if reason:
        return Outcome(fail(f"Invalid group name: {reason}"))
    if group in state.groups:
        return Outcome(fail(f"{group} already exist"))
    topic = ctx.new_topic()
    return Outcome(ok(), [("create_group", group, me, topic)], effect=Join(me, group, topic))


def _list_group(state, me, args, ctx):
    return Outcome(quotas.capped("group", state.groups, ctx.limits))


def _list_joined(state, me, args, ctx):
    return Outcome(quotas.capped("group", state.users[me].joined, ctx.limits))


def _join_group(state, me, args, ctx):
    group = state.groups.get(args[0])
    if group is None:
        return Outcome(fail(f"{args[0]} does not exist"))
    if me in group.members:
        return Outcome(fail(f"Already a member of {group.name}"))
    return Outcome(ok(), [("join_group", group.name, me)], effect=Join(me, group.name, group.topic))


def _send_group(state, me, args, ctx):
    group = state.groups.get(args[0])
    if group is None:
        return Outcome(fail("No such group exist"))
    if me not in group.members:
        return Outcome(fail(f"You are not the member of {group.name}"))
    online = [m for m in group.members if state.users[m].session]
    body = protocol.chat_body(me, " ".join(args[1:]), group=group.name, recipients=online)
    # Topics are not durable in ActiveMQ, so persistence would buy nothing.
    return Outcome(ok(), effect=Publish(group.topic, body, False))


def _listen(state, me, args, ctx):
    # The app server binds the connection to `me` when it sees the reply.
    return Outcome(ok("Listening"))


HANDLERS = {
    "logout": _logout, "delete": _delete, "locate": _locate,
    "invite": _invite, "list-invite": _list_invite, "accept-invite": _accept_invite,
    "list-friend": _list_friend, "post": _post, "receive-post": _receive_post,
    "send": _send, "create-group": _create_group, "list-group": _list_group,
    "list-joined": _list_joined, "join-group": _join_group, "send-group": _send_group,
    "listen": _listen,
}


def handle_relayed(state, request, ctx, me=None):
    """A request an app server relayed, decoded (None: none, or not one):
    `Bad request`; register/login belong to the login server; else `handle`
    (`me`: the token's user, looked up by the caller)."""
    if request is None:
        return Outcome(fail(protocol.BAD_REQUEST))
    if request.command is not None and not request.command.token:
        return Outcome(fail(f"Send {request.name} to the login server"))
    return handle(state, request, ctx, Server.APP, me=me)


_LOOK_UP = object()   # handle(me=...): the token's user is not looked up yet


def handle(state, request, ctx, served_by, me=_LOOK_UP):
    """Every token command, in the priority order of docs/protocol.md §3:
    unknown command, token, argument count, wrong server, own checks, then
    quotas (lib/social/quotas.py: a refusal drops the mutations and effect).
    register/login are not handled here (see check_/finish_ above)."""
    command = request.command
    if command is None:
        return Outcome(fail(f"Unknown command {request.name}"))
    if not command.token:
        raise ValueError(f"{request.name} is a two-phase command")
    words = request.words
    if me is _LOOK_UP:   # (the login core has looked it up already: a sha256 saved)
        me = state.user_for_token(words[0]) if words else None
    if me is None:
        return Outcome(fail(NOT_LOGIN))
    args = words[1:]
    if not protocol.arity_ok(command, args):
        return Outcome(fail(command.usage))
    if command.server is not served_by:
        where = "the login server" if command.server is Server.LOGIN else "your application server"
        return Outcome(fail(f"Send {command.name} to {where}"))
    outcome = HANDLERS[command.name](state, me, args, ctx)
    if command.name not in quotas.QUOTAED:    # most commands (the lists) have no quota to check
        return outcome
    refused = outcome.reply["status"] == 0 and quotas.refusal(command.name, state, me, args, ctx.limits)
    return Outcome(refused) if refused else outcome
