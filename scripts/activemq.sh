#!/usr/bin/env bash
# Debian's ActiveMQ 5.17 for np-social: STOMP only, every connection logs in
# (JAAS), no systemd.
#   usage: scripts/activemq.sh COMMAND
#   install           install the Debian package if missing (nothing else)
#   ensure [FILE]     install, configure the instance, add or update the user
#                     of NP_BROKER_USER / NP_BROKER_PASSWORD (or of FILE:
#                     `user=` and `password=` lines, as DATA/broker.credentials),
#                     start the broker unless it runs; restarts it when its
#                     configuration changed (an install from before logins
#                     were required is upgraded so). A new user needs no restart.
#                     Fast path (configured, running, user present): ~10 ms.
#   start | stop | restart | status
#   render DIR        write the same configuration (activemq.xml, login.config,
#                     groups.properties, log4j.properties) into DIR, and
#                     users.properties with the NP_BROKER_USER user: for a
#                     broker run by hand (the tests' own, tests/broker_instance.py)
#   purge             stop and delete an instance other than `main`
# Environment:
#   NP_BROKER_BIND      address STOMP listens on (default 127.0.0.1; the EC2
#                       login host uses its private address or 0.0.0.0, and the
#                       security group opens the port to app servers only)
#   NP_BROKER_PORT      STOMP port (default 61613)
#   NP_BROKER_INSTANCE  Debian instance name (default main: the machine's
#                       broker). Tests use a throwaway name, never main.
#   NP_BROKER_USER, NP_BROKER_PASSWORD  the user `ensure` and `render` add
#   NP_BROKER_CREDENTIALS_FILE  where those came from, for the sudo hint only
# Exit status: 0 done, 1 failed, 2 usage, 4 needs root (one line says how).
# Passwords never reach argv (world-readable in /proc) or the output: they are
# handled by bash builtins only.
# Pitfalls handled here (measured on Debian's ActiveMQ 5.17): the
# package has no STOMP connector and logs nothing; a stale pidfile (kill -9,
# or a zombie java that PID 1 has not reaped yet) makes a start do nothing,
# silently; the init script starts every enabled instance and sleeps 5 s.
set -euo pipefail

PORT=${NP_BROKER_PORT:-61613}
BIND=${NP_BROKER_BIND:-127.0.0.1}
INSTANCE=${NP_BROKER_INSTANCE:-main}
case "$0" in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
TEMPLATES=$HERE/activemq
AVAIL=/etc/activemq/instances-available/$INSTANCE
ENABLED=/etc/activemq/instances-enabled/$INSTANCE
USERS=$AVAIL/users.properties
BASE=/var/lib/activemq/$INSTANCE
PIDFILE=/var/run/activemq/$INSTANCE.pid
LOGDIR=/var/log/activemq
APT_LOG=/var/log/np-activemq-apt.log
LOCK=/run/lock/np-activemq.lock
JAR=/usr/share/activemq/bin/activemq.jar
START_WAIT=${NP_BROKER_START_WAIT:-60}   # seconds before `start` gives up
STOP_WAIT=15                             # seconds of SIGTERM grace before SIGKILL
# The first line of the rendered activemq.xml that names this layout: the
# fast path compares it, so an older install (no login, OpenWire) is upgraded.
STAMP="<!-- np-social broker config 4: stomp://$BIND:$PORT only (no Nagle), JAAS login required, personal queues collected -->"
# What a user name and a password may hold: safe unescaped in users.properties,
# in a STOMP CONNECT frame and in a shell word (lib/messaging/credentials.py).
USER_RE='^[A-Za-z0-9_.-]{1,64}$'
PASS_RE='^[A-Za-z0-9._~+/=-]{16,256}$'

say() { echo "activemq: $*" >&2; }
die() { echo "activemq: ERROR: $*" >&2; exit 1; }

case "$PORT" in ''|*[!0-9]*) die "NP_BROKER_PORT must be a number, got '$PORT'" ;; esac
[[ $INSTANCE =~ ^[a-z0-9][a-z0-9_-]{0,31}$ ]] || die "NP_BROKER_INSTANCE must be a short lowercase name, got '$INSTANCE'"
case "$BIND" in 0.0.0.0|::|'') PROBE_HOST=127.0.0.1 ;; *) PROBE_HOST=$BIND ;; esac

# -- credentials ----------------------------------------------------------------
CRED_USER=''
CRED_PASS=''
CRED_FILE=${NP_BROKER_CREDENTIALS_FILE:-}

# Read `user=` / `password=` lines of $1 (builtins only: no password in argv).
read_credentials_file() {
    local line
    [ -r "$1" ] || die "cannot read credentials file $1"
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            user=*) CRED_USER=${line#user=} ;;
            password=*) CRED_PASS=${line#password=} ;;
        esac
    done <"$1"
    [ -n "$CRED_USER" ] && [ -n "$CRED_PASS" ] || die "$1 needs a user= line and a password= line"
}

load_credentials() {
    if [ -n "${1:-}" ]; then
        CRED_FILE=$1
        read_credentials_file "$1"
    else
        CRED_USER=${NP_BROKER_USER:-}
        CRED_PASS=${NP_BROKER_PASSWORD:-}
        if [ -n "$CRED_USER" ] && [ -z "$CRED_PASS" ]; then die "NP_BROKER_USER is set but NP_BROKER_PASSWORD is not"; fi
        if [ -z "$CRED_USER" ] && [ -n "$CRED_PASS" ]; then die "NP_BROKER_PASSWORD is set but NP_BROKER_USER is not"; fi
        [ -n "$CRED_USER" ] || return 0
    fi
    [[ $CRED_USER =~ $USER_RE ]] || die "broker user name: 1-64 characters of A-Z a-z 0-9 _ . -"
    [[ $CRED_PASS =~ $PASS_RE ]] || die "broker password: 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -"
}

# Is the user in users.properties with this password? As root: read the
# file. Others cannot read it (0640 root:activemq): ask the broker itself.
user_present() {
    [ -n "$CRED_USER" ] || return 0
    if [ -r "$USERS" ]; then
        local line
        while IFS= read -r line; do
            [ "$line" != "$CRED_USER=$CRED_PASS" ] || return 0
        done <"$USERS"
        return 1
    fi
    stomp_login_ok
}

# A STOMP CONNECT with the credentials: CONNECTED or not (then DISCONNECT).
stomp_login_ok() (
    exec 3<>"/dev/tcp/$PROBE_HOST/$PORT" || exit 1
    printf 'CONNECT\naccept-version:1.2\nhost:localhost\nlogin:%s\npasscode:%s\n\n\0' \
        "$CRED_USER" "$CRED_PASS" >&3
    reply=''
    IFS= read -r -t 5 reply <&3 || true
    [ "$reply" = CONNECTED ] || exit 1
    printf 'DISCONNECT\n\n\0' >&3
) 2>/dev/null

# Write users.properties with CRED_USER's line added or replaced (0640
# root:activemq: the broker reads it, nobody else). $1: the file; $2: owner.
put_user() {
    local path=$1 owner=$2 line tmp
    tmp=$path.tmp.$$
    (umask 077; : >"$tmp")
    {
        if [ -f "$path" ]; then
            while IFS= read -r line || [ -n "$line" ]; do
                case "$line" in "$CRED_USER="*) ;; *) printf '%s\n' "$line" ;; esac
            done <"$path"
        else
            echo "# Written by np-social scripts/activemq.sh: USER=PASSWORD, one a line."
        fi
        [ -z "$CRED_USER" ] || printf '%s=%s\n' "$CRED_USER" "$CRED_PASS"
    } >"$tmp"
    if [ -n "$owner" ]; then
        chown "$owner" "$tmp"
        chmod 0640 "$tmp"
    fi
    mv -f "$tmp" "$path"
}

need_root() {
    [ "$EUID" -eq 0 ] && return 0
    local how="sudo $0 $1"
    if [ "$1" = ensure ]; then
        if [ -n "$CRED_FILE" ]; then
            how="sudo $0 ensure $CRED_FILE"
        elif [ -n "$CRED_USER" ]; then
            how="sudo --preserve-env=NP_BROKER_USER,NP_BROKER_PASSWORD $0 ensure"
        fi
    fi
    echo "activemq: needs root for the one-time set-up: run $how" >&2
    exit 4
}

# -- configuration ----------------------------------------------------------------
port_open() {
    # A listening socket, checked without connecting (a probe connection
    # would make the broker log an aborted STOMP session every time).
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$PORT" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/$PROBE_HOST/$PORT") 2>/dev/null
    fi
}

# The broker's java pid if it is alive: not gone, not a zombie, and really
# our instance (pids get reused). Prints nothing otherwise.
live_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    [ -r "/proc/$pid/status" ] || return 0
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 0
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qx -- "-Dactivemq.base=$BASE" || return 0
    echo "$pid"
}

# Write $2 to $1 only if it differs; returns 0 when the file changed.
put_file() {
    local path=$1 content=$2
    if [ -f "$path" ] && [ "$(cat "$path")" == "$content" ]; then
        return 1
    fi
    printf '%s\n' "$content" >"$path.tmp.$$"
    chmod 0644 "$path.tmp.$$"
    mv -f "$path.tmp.$$" "$path"
    return 0
}

# Render the templates into directory $1; sets CHANGED=1 when a file changed.
CHANGED=0
render_into() {
    local dir=$1 name text
    [ -f "$TEMPLATES/activemq.xml.in" ] || die "templates missing in $TEMPLATES"
    for name in activemq.xml login.config groups.properties log4j.properties; do
        if [ -f "$TEMPLATES/$name.in" ]; then text=$(<"$TEMPLATES/$name.in"); else text=$(<"$TEMPLATES/$name"); fi
        text=${text//@BIND@/$BIND}
        text=${text//@PORT@/$PORT}
        if put_file "$dir/$name" "$text"; then CHANGED=1; fi
    done
}

install_package() {
    [ -x /usr/bin/activemq ] && [ -f "$JAR" ] && return 0
    say "installing Debian package activemq (apt log: $APT_LOG)"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=120)
    if ! "${apt[@]}" install activemq >>"$APT_LOG" 2>&1; then
        say "install failed; running apt-get update and retrying"
        apt-get -q -o DPkg::Lock::Timeout=120 update >>"$APT_LOG" 2>&1 || true
        "${apt[@]}" install activemq >>"$APT_LOG" 2>&1 \
            || die "apt-get install activemq failed; see $APT_LOG"
    fi
}

# Configure the instance; sets CHANGED=1 when anything the running broker
# reads at start changed (users.properties is re-read by the broker itself).
configure() {
    local java_home
    java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
    mkdir -p "$AVAIL"
    render_into "$AVAIL"

    # /usr/bin/activemq reads only this file when it exists, so it is complete.
    if put_file "$AVAIL/options" "$(cat <<EOF
# Written by np-social scripts/activemq.sh.
ACTIVEMQ_USER="activemq"
DIETIME=2
# No blind sleep: scripts/activemq.sh polls the port.
STARTTIME=0
ACTIVEMQ_BASE="$BASE"
ACTIVEMQ_CONF="$ENABLED"
ACTIVEMQ_DATA="$BASE/data"
ACTIVEMQ_TMP="$BASE/tmp"
JAVA_HOME="$java_home"
ACTIVEMQ_OPTS="-Xms64M -Xmx512M -Dorg.apache.activemq.UseDedicatedTaskRunner=true -Djava.io.tmpdir=$BASE/tmp -Djava.security.auth.login.config=$ENABLED/login.config"
ACTIVEMQ_ARGS="start xbean:activemq.xml"
ACTIVEMQ_OUT="$LOGDIR/$INSTANCE.log"
EOF
)"; then CHANGED=1; fi

    if [ ! -f "$USERS" ]; then
        local keep=$CRED_USER
        CRED_USER=''          # an empty file; the user is added by put_user
        put_user "$USERS" root:activemq
        CRED_USER=$keep
    fi
    chown root:activemq "$USERS"
    chmod 0640 "$USERS"

    if [ "$(readlink "$ENABLED" 2>/dev/null)" != "../instances-available/$INSTANCE" ]; then
        ln -sfn "../instances-available/$INSTANCE" "$ENABLED"
        CHANGED=1
    fi
    mkdir -p "$BASE/data" "$BASE/tmp" "$LOGDIR" /var/run/activemq
    chown activemq "$BASE" "$BASE/data" "$BASE/tmp" "$LOGDIR" /var/run/activemq
}

# -- running ----------------------------------------------------------------------
wait_port() {
    local t0=$SECONDS
    until port_open; do
        # The detached launcher writes the pidfile within a second or so; no
        # live java after 5 s means it died: say so now, not in a minute.
        if [ $((SECONDS - t0)) -ge 5 ] && [ -z "$(live_pid)" ]; then
            die "broker exited during start-up; see $LOGDIR/$INSTANCE.log"
        fi
        [ $((SECONDS - t0)) -lt "$START_WAIT" ] || die "STOMP port $BIND:$PORT not open after ${START_WAIT} s; see $LOGDIR/$INSTANCE.log"
        sleep 0.1
    done
}

# Start this instance only, as Debian's init script starts each instance
# (it would start every enabled one, throwaway test instances included).
launch() {
    (
        export INSTANCE ACTIVEMQ_USER=activemq ACTIVEMQ_PIDFILE=$PIDFILE
        export ACTIVEMQ_HOME=/usr/share/activemq ACTIVEMQ_CONFIG_DIR=$ENABLED
        start-stop-daemon --start --quiet --pidfile "$PIDFILE" --chuid activemq \
            --background --name java --startas /usr/bin/activemq -- start xbean:activemq.xml
    ) >>"$LOGDIR/init.log" 2>&1 || die "starting /usr/bin/activemq failed; see $LOGDIR/init.log"
}

do_start() {
    if port_open; then
        say "already running (STOMP $BIND:$PORT)"
        return 0
    fi
    local pid
    pid=$(live_pid)
    if [ -n "$pid" ]; then
        # Alive but port closed: still booting, or configured for another port.
        say "broker pid $pid is up; waiting for STOMP $BIND:$PORT"
        wait_port
        say "ready on $BIND:$PORT"
        return 0
    fi
    if [ -e "$PIDFILE" ]; then
        say "removing stale pidfile $PIDFILE"
        rm -f "$PIDFILE"
    fi
    say "starting broker $INSTANCE (log: $LOGDIR/$INSTANCE.log)"
    local t0=${EPOCHREALTIME/./}
    launch
    wait_port
    local ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
    say "ready on $BIND:$PORT after $((ms / 1000)).$(printf %03d $((ms % 1000))) s"
}

do_stop() {
    local pid deadline
    pid=$(live_pid)
    if [ -z "$pid" ]; then
        rm -f "$PIDFILE"
        if port_open; then
            die "port $PORT is open but $PIDFILE names no live broker; not touching it"
        fi
        say "already stopped"
        return 0
    fi
    say "stopping broker $INSTANCE pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_WAIT))
    while [ -n "$(live_pid)" ]; do
        if [ $SECONDS -ge $deadline ]; then
            say "pid $pid ignored SIGTERM for ${STOP_WAIT} s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + STOP_WAIT))
        fi
        sleep 0.05
    done
    rm -f "$PIDFILE"
    say "stopped"
}

# Serialize everything that changes state (two `ensure`s at once, a test
# restarting the broker while a server starts it).
locked() {
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock -w 180 9 || die "could not lock $LOCK"
}

# Everything in place, running, and the user present? No fork but the port
# check (and, for a user who cannot read users.properties, one STOMP login).
ready() {
    [ -x /usr/bin/activemq ] && [ -L "$ENABLED" ] && [ -r "$AVAIL/activemq.xml" ] || return 1
    local first second
    { IFS= read -r first && IFS= read -r second; } <"$AVAIL/activemq.xml" || return 1
    [ "$second" = "$STAMP" ] && port_open && user_present
}

do_ensure() {
    load_credentials "${1:-}"
    ready && return 0
    need_root ensure
    locked
    install_package
    configure
    if [ -n "$CRED_USER" ] && ! user_present; then
        put_user "$USERS" root:activemq
        say "user $CRED_USER added to instance $INSTANCE"
    fi
    if [ $CHANGED = 1 ]; then
        say "configured instance $INSTANCE (STOMP $BIND:$PORT, login required)"
        # A running broker still has the old configuration.
        if [ -n "$(live_pid)" ]; then
            do_stop
        elif port_open; then
            die "configuration changed, but what listens on port $PORT is not instance $INSTANCE ($PIDFILE); stop it, then run ensure again"
        fi
    fi
    do_start
}

do_render() {
    local dir=${1:-}
    [ -n "$dir" ] || { echo "usage: $0 render DIR" >&2; exit 2; }
    load_credentials ""
    (umask 077; mkdir -p "$dir")
    render_into "$dir"
    rm -f "$dir/users.properties"
    (umask 077; put_user "$dir/users.properties" "")
}

do_purge() {
    [ "$INSTANCE" != main ] || die "purge refuses the machine's instance main"
    need_root purge
    locked
    [ -d "$AVAIL" ] || [ -d "$BASE" ] || { say "no instance $INSTANCE"; return 0; }
    do_stop
    rm -rf "$ENABLED" "$AVAIL" "$BASE" "$LOGDIR/$INSTANCE.log"
    say "instance $INSTANCE removed"
}

case "${1:-}" in
    install) need_root install; locked; install_package ;;
    ensure)  do_ensure "${2:-}" ;;
    start)   need_root start; locked; install_package; configure; do_start ;;
    stop)    need_root stop; locked; do_stop ;;
    restart) need_root restart; locked; install_package; configure; do_stop; do_start ;;
    render)  do_render "${2:-}" ;;
    purge)   do_purge ;;
    status)
        pid=$(live_pid)
        if port_open; then
            echo "running${pid:+ (pid $pid)} on $BIND:$PORT"
            exit 0
        fi
        echo "stopped${pid:+ (pid $pid is up but port $PORT is closed)}"
        exit 1 ;;
    *) echo "usage: $0 install|ensure [CREDENTIALS_FILE]|start|stop|restart|status|render DIR|purge" >&2; exit 2 ;;
esac
