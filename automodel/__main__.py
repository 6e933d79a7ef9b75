"""`python -m automodel ...` is the same as the `automodel` command."""

from automodel.cli.app import main

main()
