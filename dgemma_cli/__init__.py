"""The dgemma command-line tool."""
