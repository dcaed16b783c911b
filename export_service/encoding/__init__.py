"""Raw BSON batches → CSV bytes: the CPU-bound part of an export.

Everything an encoder process runs lives here and imports only the standard library and `bson`,
so a child process (`processes.py`, `child.py`) starts in ~15 MB instead of the service's ~80.
"""
