"""The UDP hub.

  wire.py      the datagram codec and constants (shared with lib/clients/udp.py)
  actions.py   Send, SetTimer, CancelTimer: actions of both UDP state machines
  session.py   the server's session state machine (`Hub`), sans I/O: the diagram as a table
  logins.py    its login half: the login guard and transition, password checks
  state.py     a session's record and states
  guards.py    the defences' policies: rate limits, the check queue, the reflection ledger
  limits.py    every limit: flag, default, meaning (udp_hub.py --help)
  server.py    the driver: one UDP socket, timers, scrypt off the loop, accounts reload
"""
