"""The application-server pool (packing, scale-out/in, health) and its
launchers: local processes and EC2 instances."""
