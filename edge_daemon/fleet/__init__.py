"""The fleet: a collector that stores every device's events in PostgreSQL exactly once, and a fleet simulation."""
