"""The clients: TCP social service (./client HOST PORT) and UDP hub (--udp)."""
