"""stage2/: see docs/ARCHITECTURE.md."""
