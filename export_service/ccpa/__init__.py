"""CCPA deletion (contract §7): `deletion.py` removes a user's CCPA-type exports, `requests.py`
keeps the audit document of each request in `ccpa_requests`."""
