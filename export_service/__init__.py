"""export-service: fan-campaign data from MongoDB to CSV/ZIP exports on S3."""

__version__ = "0.1.0"
