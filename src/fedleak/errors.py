"""User-facing errors.

Anything a user can cause (a bad path, an unknown name, an impossible setting) raises
:class:`FedleakError`. The CLI turns it into one line on stderr and exit code 2; library users get an
ordinary exception with the same message.
"""

from __future__ import annotations


class FedleakError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ConfigError(FedleakError):
    """An invalid configuration value, key or override."""


class DataError(FedleakError):
    """Missing, corrupt or out-of-range data."""
