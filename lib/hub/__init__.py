"""The UDP hub.

  wire.py      the datagram codec and constants (shared with lib/clients/udp.py)
  actions.py   Send, SetTimer, CancelTimer: actions of both UDP state machines
  session.py   the server's session state machine (`Hub`), sans I/O
  server.py    the driver: one UDP socket, timers, scrypt off the loop, accounts reload
"""
