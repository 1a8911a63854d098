"""The user-data script of an app-server instance, from the template
`userdata.sh.in` next to this module.

The template is a plain bash script in which every `@NAME@` is replaced, in
one pass, by a shell-quoted value (`shlex.quote`), so no value can end a
quote, start a command or be substituted a second time. Values with control
characters are refused (a newline would end the comment naming the server).
"""
import os
import re
import shlex

from lib.loop.address import format_address

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "userdata.sh.in")
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z_]*)@")
_template = None


def template():
    global _template
    if _template is None:
        with open(TEMPLATE, encoding="utf-8") as f:
            _template = f.read()
    return _template


def quote(value):
    value = str(value)
    if any(not c.isprintable() for c in value):
        raise ValueError(f"user-data value {value!r} holds a control character")
    return shlex.quote(value)


def render(text, values):
    """`text` with every @NAME@ replaced by `values[NAME]` (already shell
    text); KeyError for a placeholder without a value, ValueError for a
    value nothing uses."""
    used = set()

    def fill(match):
        used.add(match.group(1))
        return values[match.group(1)]
    out = _PLACEHOLDER.sub(fill, text)
    unused = set(values) - used
    if unused:
        raise ValueError(f"the template has no {', '.join(sorted(unused))}")
    return out


def user_data(config, server_id, secret):
    """The script `server_id`'s instance runs at first boot (config: Ec2Config).
    The broker credentials (config.credentials: .user, .password) go into the
    instance's environment file, the limits (config.app_args) onto the command line."""
    credentials = config.credentials
    values = {
        "SERVER_ID": quote(server_id),
        "CLUSTER": quote(config.cluster),
        "FIRST_ADDRESS": "public-ipv4" if config.app_address == "public" else "local-ipv4",
        "PROJECT_DIR": quote(config.project_dir),
        "SECRET": quote(secret),
        "LOGIN": quote(format_address(*config.login_address)),
        "APP_PORT": str(int(config.app_port)),
        "BROKER_ARGS": f" --broker {quote(config.broker)}" if config.broker else "",
        "BROKER_USER": quote(credentials.user if credentials else ""),
        "BROKER_PASSWORD": quote(credentials.password if credentials else ""),
        "APP_ARGS": "".join(" " + quote(arg) for arg in config.app_args),
    }
    return render(template(), values)
