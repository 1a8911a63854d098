"""Live tests: real processes, real sockets on 127.0.0.0/8, the real broker."""
