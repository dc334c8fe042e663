"""`hybrid-alloc validate`'s real run: the servers (server.py), the load (load.py), the report (report.py),
the whole run (runner.py)."""
