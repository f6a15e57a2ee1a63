"""util/: see docs/ARCHITECTURE.md."""
