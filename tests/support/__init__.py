"""What the tests share: servers, settings and tokens, data builders, S3 looks, gates, fault
proxies and worker processes. Test modules import from here, never from each other; fixtures
stay in `tests/conftest.py`."""
