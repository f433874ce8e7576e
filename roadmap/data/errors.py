"""The data package's one error type."""
from __future__ import annotations


class DataError(Exception):
    """Missing, malformed or misconfigured data; the message says which config key and how to fix it."""
