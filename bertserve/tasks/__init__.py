"""Tasks served as engines: each package holds its engine, training, evaluation, routes and CLI."""
