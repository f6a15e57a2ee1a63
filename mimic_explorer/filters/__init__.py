"""filters/: see docs/ARCHITECTURE.md."""
