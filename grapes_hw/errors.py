"""Errors raised for bad user input.

Every error a user can cause by a setting names the setting (``field``) so the CLI can print
``grapes-hw: error: <field>: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has a value outside what is allowed.

    ``field`` is the name the user typed (a CLI option such as ``--lr`` or a TOML key path such
    as ``fixed.bits``); ``message`` says what is allowed.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DataError(RuntimeError):
    """A dataset file is missing, truncated or fails its checksum."""


class BackendUnavailable(RuntimeError):
    """A backend's optional dependency (e.g. aihwkit) is not installed."""
