"""`python -m attnsynth …` runs the CLI."""

from attnsynth.cli import main

main()
