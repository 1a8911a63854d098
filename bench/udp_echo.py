#!/usr/bin/env python3
"""Baseline: the smallest honest UDP echo server.

Same framing as the UDP hub: one message per datagram. One socket, one
`selectors` loop, up to 64 datagrams per wake-up (as udp_hub.py reads), each
sent straight back to its source.

    python bench/udp_echo.py HOST PORT
"""
import selectors
import signal
import socket
import sys


def serve(host, port, ready=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    if ready:
        ready(sock.getsockname()[1])
    while True:
        sel.select()
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            try:
                sock.sendto(data, addr)
            except OSError:
                pass


def main(argv):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(argv[0], int(argv[1]), ready=lambda p: print(p, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
