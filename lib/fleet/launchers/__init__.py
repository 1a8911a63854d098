"""Ways to start and stop application servers (local processes, EC2)."""
