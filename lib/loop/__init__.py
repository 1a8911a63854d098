"""The event loop and transports: the reactor (file and time events, wake-up,
before-sleep hooks), line-framed TCP, keyed timers, child processes."""
