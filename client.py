#!/usr/bin/env python3
"""np-social client.

  ./client HOST PORT          the TCP social service (commands on stdin)
  ./client --udp HOST PORT    the UDP hub
"""
import sys


def main(argv):
    if argv and argv[0] == "--udp":
        from lib.clients import udp
        return udp.main(argv[1:])
    from lib.clients import tcp
    return tcp.main(argv)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
