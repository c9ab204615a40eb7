"""The `wse-sim` command: one module per group of sub-commands (`main` builds the parser)."""
