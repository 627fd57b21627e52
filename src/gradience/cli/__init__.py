"""Command-line interface: one thin module per command (parsing and printing only)."""
