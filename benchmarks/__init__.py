"""dockyard's benchmarks (run with `tox -e bench`); never collected by the test run."""
