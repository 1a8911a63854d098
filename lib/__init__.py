"""np-social's library, one package per subsystem (README: "Reading the code").

  loop/       the event loop and transports (reactor, line framing, timers, child processes)
  accounts/   the name rule and password hashing (TCP service and hub alike)
  social/     the TCP social service: protocol, command semantics, store, login and app servers
  fleet/      the app-server pool and its launchers (local processes, EC2)
  messaging/  the ActiveMQ (STOMP) link
  hub/        the UDP hub
  clients/    the TCP and UDP clients
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
