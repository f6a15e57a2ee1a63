"""pipeline/: see docs/ARCHITECTURE.md."""
