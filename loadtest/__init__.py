"""Load generator for a running nmtserve server: open-loop (Poisson arrivals) and closed-loop runs, latency
statistics, JSON reports and PNG plots. ``nmtserve loadtest`` is its command line; ``bench`` runs the benchmarks
recorded in docs/benchmarks.md."""
