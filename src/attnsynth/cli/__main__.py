"""`python -m attnsynth.cli …` (and `accelerate launch -m attnsynth.cli …`) runs the CLI."""

from attnsynth.cli import main

main()
