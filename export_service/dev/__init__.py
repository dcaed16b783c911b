"""Dev-only code: the demo-data generator (`seed`) and the embedded-server launcher (`embedded`).

Nothing here serves production traffic; `export-service dev` and `seed`, the tests and the
benchmarks use it.
"""
