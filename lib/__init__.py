"""np-social library: one concern per module (see docs/design.md)."""
