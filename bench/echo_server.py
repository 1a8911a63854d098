#!/usr/bin/env python3
"""Baseline: the smallest honest selectors line-echo server (TCP).

Same framing as np-social: a request is one line ending in "\\n", the reply is
one line ending in "\\n" (here: the request itself). One thread, one
`selectors` loop, non-blocking sockets, TCP_NODELAY, replies written at once
(buffered only when the socket is full). It is what the login server would
cost if it did no work at all, so `np-social / echo` is the overhead ratio.

    python bench/echo_server.py HOST PORT
"""
import selectors
import signal
import socket
import sys


def serve(host, port, ready=None):
    sel = selectors.DefaultSelector()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    if ready:
        ready(lsock.getsockname()[1])
    state = {}   # sock -> [inbuf, outbuf]

    def close(sock):
        sel.unregister(sock)
        state.pop(sock, None)
        sock.close()

    while True:
        for key, mask in sel.select():
            sock = key.fileobj
            if key.data is None:                       # the listener
                for _ in range(64):
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    state[conn] = [bytearray(), bytearray()]
                    sel.register(conn, selectors.EVENT_READ, 1)
                continue
            inbuf, outbuf = state[sock]
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    close(sock)
                    continue
                if data == b"":
                    close(sock)
                    continue
                if data:
                    inbuf += data
                    end = inbuf.rfind(b"\n")
                    if end >= 0:                       # echo every complete line
                        outbuf += inbuf[:end + 1]
                        del inbuf[:end + 1]
            if outbuf:
                waiting = bool(mask & selectors.EVENT_WRITE) or len(state[sock]) > 2
                try:
                    sent = sock.send(outbuf)
                    del outbuf[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(sock)
                    continue
                if outbuf and not waiting:            # socket full: wait until writable
                    state[sock].append(True)
                    sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, 1)
                elif not outbuf and waiting:
                    del state[sock][2:]
                    sel.modify(sock, selectors.EVENT_READ, 1)


def main(argv):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(argv[0], int(argv[1]), ready=lambda p: print(p, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
