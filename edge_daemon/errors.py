"""Errors a user can cause (config, model files, devices, media), reported as one line with exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: the message names the file, field or device and what to do."""

    exit_code = 2

    def __str__(self) -> str:
        # Always one line: parser messages and odd key names can carry newlines and control characters.
        return " ".join("".join(c if c.isprintable() else " " for c in super().__str__()).split())
