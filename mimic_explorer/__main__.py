"""``python -m mimic_explorer`` (and ``torchrun -m mimic_explorer``) runs the CLI."""

from mimic_explorer.cli import console_main

if __name__ == "__main__":
    console_main()
