"""Studies: a grid of strategies x seeds x task orders, each cell an ordinary run (grid.py), run N at a
time with resume (runner.py), estimated before it runs (estimate.py); `analysis.study` reports on it."""
