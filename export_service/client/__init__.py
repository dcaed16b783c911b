"""`export-service submit|list|status`: a command-line client of a running service."""
