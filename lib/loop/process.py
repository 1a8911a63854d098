"""Child processes on a reactor: exit events through a pidfd, and children
that die with their parent (app servers, the store's snapshot writer)."""
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig=signal.SIGTERM, parent=None):
    """Ask Linux to send us `sig` when our parent dies, even by kill -9.
    False if the parent (pid `parent`, when given) is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return True
    # The parent may have died before we asked: then we were re-parented.
    return os.getppid() == parent if parent is not None else os.getppid() != 1


def watch_exit(reactor, pid, on_exit, poll=0.5):
    """Call `on_exit()` on the loop once child `pid` has exited; it is not
    reaped here (the caller reaps: `Popen.wait()` or `os.waitpid`). Uses a
    pidfd (no SIGCHLD handler, no polling), or polls on old kernels.
    Returns a function that stops watching."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    state = {"active": True}

    def stop():
        if state["active"]:
            state["active"] = False
            if fd is not None:
                reactor.forget(fd)
                os.close(fd)

    def exited():
        if state["active"]:
            stop()
            on_exit()

    def check():
        if not state["active"]:
            return
        try:
            # WNOWAIT: look without reaping, so the caller still can.
            done = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            done = True
        if done:
            exited()
        else:
            reactor.call_later(poll, check)

    if fd is not None:
        reactor.add_reader(fd, exited)
    else:
        reactor.call_later(poll, check)
    return stop
