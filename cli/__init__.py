"""nmtserve command-line interface."""
