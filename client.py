#!/usr/bin/env python3
"""np-social client.

  ./client HOST PORT          the TCP social service (commands on stdin)
  ./client --udp HOST PORT    the UDP hub
"""
import sys


def main(argv):
    if argv and argv[0] == "--udp":
        from lib import udp_client
        return udp_client.main(argv[1:])
    from lib import tcp_client
    return tcp_client.main(argv)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
