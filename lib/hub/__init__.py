"""The UDP hub: the datagram codec and session state machine, and its driver."""
