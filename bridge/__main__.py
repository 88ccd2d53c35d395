"""`python -m bridge` is the `alert-bridge` command."""

from bridge.cli import main

main()
