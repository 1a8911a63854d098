"""snapshot.json: the whole State as one JSON document at one journal seq.

`snapshot_chunks` writes it one record at a time (the forked snapshot writer
never holds the whole text); `state_from_json` reads it back.
"""
import json

from lib.social import commands


def _user_json(u):
    return {"name": u.name, "password": u.password, "invites": list(u.invites),
            "accepted_by_me": list(u.accepted_by_me), "accepted_mine": list(u.accepted_mine),
            "posts": u.posts, "joined": list(u.joined)}


_SECTIONS = (   # snapshot.json's lists: (key, State attribute, record of one item)
    ("users", "users", _user_json),
    ("groups", "groups", lambda g: {"name": g.name, "topic": g.topic, "members": list(g.members)}),
    ("sessions", "sessions", lambda s: {"user": s.user, "digest": s.digest, "queue": s.queue}),
)


def state_to_json(state, seq):
    return {"seq": seq, **{key: [record(x) for x in getattr(state, attr).values()]
                           for key, attr, record in _SECTIONS}}


def snapshot_chunks(state, seq, size=1 << 20):
    """snapshot.json as UTF-8 chunks of about `size` bytes: the same document
    as json.dumps(state_to_json(...)), one record encoded at a time, so the
    writer never holds the whole text and can sync as it goes."""
    encode = json.JSONEncoder(ensure_ascii=False).encode
    buf = [f'{{"seq": {seq}']
    held = 0
    for key, attr, record in _SECTIONS:
        buf.append(f', "{key}": [')
        for i, item in enumerate(getattr(state, attr).values()):
            text = encode(record(item))
            buf.append(", " + text if i else text)
            held += len(text)
            if held >= size:
                yield "".join(buf).encode("utf-8")
                buf, held = [], 0
        buf.append("]")
    buf.append("}")
    yield "".join(buf).encode("utf-8")


def state_from_json(data):
    state = commands.State()
    for d in data["users"]:
        user = state.users[d["name"]] = commands.User(d["name"], d["password"])
        user.invites = dict.fromkeys(d["invites"])
        user.accepted_by_me = dict.fromkeys(d["accepted_by_me"])
        user.accepted_mine = dict.fromkeys(d["accepted_mine"])
        user.posts = list(d["posts"])
        user.joined = dict.fromkeys(d["joined"])
    for user in state.users.values():
        for inviter in user.invites:
            state.users[inviter].invited[user.name] = None
    for d in data["groups"]:
        state.groups[d["name"]] = commands.Group(d["name"], d["topic"], dict.fromkeys(d["members"]))
    for d in data["sessions"]:
        session = commands.Session(d["user"], d["digest"], d["queue"])
        state.sessions[session.digest] = session
        state.users[session.user].session = session
    return state
