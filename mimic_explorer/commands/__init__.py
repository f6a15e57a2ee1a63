"""commands/: see docs/ARCHITECTURE.md."""
