"""The jobs a user runs, each over run directories: train (and the demo), evaluate, compare
(grids x seeds, serially or in worker processes)."""
