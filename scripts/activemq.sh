#!/usr/bin/env bash
# Debian's ActiveMQ 5.17 for np-social: STOMP on 127.0.0.1, no systemd.
#   usage: scripts/activemq.sh ensure|start|stop|restart|status
#   ensure   install the package if missing, configure the `main` instance,
#            start it unless its STOMP port is already open (~1 s when it is)
#   start    start the broker and wait for its STOMP port
#   stop     SIGTERM the broker's java process and wait for it to exit
#   restart  stop + start
#   status   print running/stopped; exit 0/1
# Environment: NP_BROKER_BIND (default 127.0.0.1) is the address STOMP listens
# on (0.0.0.0 for the EC2 demo, where app servers run on other hosts; then
# restrict the port with the security group). NP_BROKER_PORT (default 61613)
# is the STOMP port. There is one
# broker per machine: `ensure` with another port rewrites its configuration
# and restarts it on the new port.
# Pitfalls handled here (measured on Debian's ActiveMQ 5.17): the
# package has no STOMP connector and logs nothing; a stale pidfile (kill -9,
# or a zombie java that PID 1 has not reaped yet) makes the init script start
# nothing, silently; the init script sleeps 5 s blindly unless STARTTIME=0.
set -euo pipefail

PORT=${NP_BROKER_PORT:-61613}
BIND=${NP_BROKER_BIND:-127.0.0.1}
INSTANCE=main
AVAIL=/etc/activemq/instances-available/$INSTANCE
ENABLED=/etc/activemq/instances-enabled/$INSTANCE
BASE=/var/lib/activemq/$INSTANCE
PIDFILE=/var/run/activemq/$INSTANCE.pid
LOGDIR=/var/log/activemq
APT_LOG=/var/log/np-activemq-apt.log
LOCK=/run/lock/np-activemq.lock
START_WAIT=${NP_BROKER_START_WAIT:-60}   # seconds before `start` gives up
STOP_WAIT=15                             # seconds of SIGTERM grace before SIGKILL

say() { echo "activemq: $*" >&2; }
die() { echo "activemq: ERROR: $*" >&2; exit 1; }

case "$PORT" in ''|*[!0-9]*) die "NP_BROKER_PORT must be a number, got '$PORT'" ;; esac

port_open() {
    # A listening socket, checked without connecting (a probe connection
    # would make the broker log an aborted STOMP session every time).
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$PORT" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
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
    mv -f "$path.tmp.$$" "$path"
    return 0
}

install_package() {
    [ -x /usr/bin/activemq ] && [ -x /etc/init.d/activemq ] && return 0
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

# Configure the `main` instance; sets CHANGED=1 when anything changed.
CHANGED=0
configure() {
    local java_home
    java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
    [ -d "$AVAIL" ] || die "$AVAIL is missing (broken activemq package?)"

    if put_file "$AVAIL/activemq.xml" "$(cat <<EOF
<!-- Written by np-social scripts/activemq.sh: edits here are overwritten. -->
<beans
  xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">

    <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>

    <broker xmlns="http://activemq.apache.org/schema/core"
            useJmx="false"
            brokerName="localhost"
            dataDirectory="\${activemq.base}/data">
        <persistenceAdapter>
            <kahaDB directory="\${activemq.base}/data/kahadb"/>
        </persistenceAdapter>
        <!-- Explicit limits: the defaults exceed the heap and the disk and
             only earn a warning at every start. -->
        <systemUsage>
            <systemUsage>
                <memoryUsage><memoryUsage percentOfJvmHeap="70"/></memoryUsage>
                <storeUsage><storeUsage limit="8 gb"/></storeUsage>
                <tempUsage><tempUsage limit="2 gb"/></tempUsage>
            </systemUsage>
        </systemUsage>
        <!-- Loopback only: nothing here is meant to be reachable from outside. -->
        <transportConnectors>
            <transportConnector name="openwire" uri="tcp://127.0.0.1:61616"/>
            <transportConnector name="stomp" uri="stomp://$BIND:$PORT"/>
        </transportConnectors>
    </broker>
</beans>
EOF
)"; then CHANGED=1; fi

    # The package ships a log4j2 config but runs log4j 1.2, so it logs nothing;
    # send everything to stdout, which ACTIVEMQ_OUT appends to main.log.
    if put_file "$AVAIL/log4j.properties" "$(cat <<'EOF'
# Written by np-social scripts/activemq.sh.
log4j.rootLogger=INFO, stdout
log4j.logger.org.apache.activemq.spring=WARN
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
EOF
)"; then CHANGED=1; fi

    # /usr/bin/activemq reads only this file when it exists, so it is complete.
    if put_file "$AVAIL/options" "$(cat <<EOF
# Written by np-social scripts/activemq.sh.
ACTIVEMQ_USER="activemq"
DIETIME=2
# No blind sleep in the init script: scripts/activemq.sh polls the port.
STARTTIME=0
ACTIVEMQ_BASE="$BASE"
ACTIVEMQ_CONF="$ENABLED"
ACTIVEMQ_DATA="$BASE/data"
ACTIVEMQ_TMP="$BASE/tmp"
JAVA_HOME="$java_home"
ACTIVEMQ_OPTS="-Xms64M -Xmx512M -Dorg.apache.activemq.UseDedicatedTaskRunner=true -Djava.io.tmpdir=$BASE/tmp"
ACTIVEMQ_ARGS="start xbean:activemq.xml"
ACTIVEMQ_OUT="$LOGDIR/$INSTANCE.log"
EOF
)"; then CHANGED=1; fi

    if [ "$(readlink "$ENABLED" 2>/dev/null)" != "../instances-available/$INSTANCE" ]; then
        ln -sfn "../instances-available/$INSTANCE" "$ENABLED"
        CHANGED=1
    fi
    mkdir -p "$BASE/data" "$BASE/tmp" "$LOGDIR" /var/run/activemq
    chown activemq "$BASE" "$BASE/data" "$BASE/tmp" "$LOGDIR" /var/run/activemq
}

wait_port() {
    local t0=$SECONDS
    until port_open; do
        # The detached launcher writes the pidfile within a second or so; no
        # live java after 5 s means it died: say so now, not in a minute.
        if [ $((SECONDS - t0)) -ge 5 ] && [ -z "$(live_pid)" ]; then
            die "broker exited during start-up; see $LOGDIR/$INSTANCE.log"
        fi
        [ $((SECONDS - t0)) -lt "$START_WAIT" ] || die "STOMP port 127.0.0.1:$PORT not open after ${START_WAIT} s; see $LOGDIR/$INSTANCE.log"
        sleep 0.1
    done
}

do_start() {
    if port_open; then
        say "already running (STOMP 127.0.0.1:$PORT)"
        return 0
    fi
    local pid
    pid=$(live_pid)
    if [ -n "$pid" ]; then
        # Alive but port closed: still booting, or configured for another port.
        say "broker pid $pid is up; waiting for STOMP 127.0.0.1:$PORT"
        wait_port
        say "ready on 127.0.0.1:$PORT"
        return 0
    fi
    if [ -e "$PIDFILE" ]; then
        say "removing stale pidfile $PIDFILE"
        rm -f "$PIDFILE"
    fi
    say "starting broker (log: $LOGDIR/$INSTANCE.log)"
    local t0=${EPOCHREALTIME/./}
    /etc/init.d/activemq start >>"$LOGDIR/init.log" 2>&1 \
        || die "/etc/init.d/activemq start failed; see $LOGDIR/init.log"
    wait_port
    local ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
    say "ready on 127.0.0.1:$PORT after $((ms / 1000)).$(printf %03d $((ms % 1000))) s"
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
    say "stopping broker pid $pid"
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

do_ensure() {
    if [ -x /usr/bin/activemq ] && [ -L "$ENABLED" ] && port_open; then
        return 0  # the fast path: all in place and running
    fi
    locked
    install_package
    configure
    if [ $CHANGED = 1 ]; then
        say "configured instance $INSTANCE (STOMP 127.0.0.1:$PORT)"
        # A running broker still has the old configuration.
        if [ -n "$(live_pid)" ] && ! port_open; then do_stop; fi
    fi
    do_start
}

case "${1:-}" in
    ensure)  do_ensure ;;
    start)   locked; install_package; configure; do_start ;;
    stop)    locked; do_stop ;;
    restart) locked; install_package; configure; do_stop; do_start ;;
    status)
        pid=$(live_pid)
        if port_open; then
            echo "running${pid:+ (pid $pid)} on 127.0.0.1:$PORT"
            exit 0
        fi
        echo "stopped${pid:+ (pid $pid is up but port $PORT is closed)}"
        exit 1 ;;
    *) echo "usage: $0 ensure|start|stop|restart|status" >&2; exit 2 ;;
esac
