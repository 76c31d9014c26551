"""freshtoken: keeps OAuth 2.0 access tokens fresh in files."""

__version__ = "0.1.0"
