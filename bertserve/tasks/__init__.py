"""Tasks served next to the encoder: each package is an engine with its training, evaluation, routes and CLI."""
