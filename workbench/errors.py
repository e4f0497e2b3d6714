"""The exceptions the core raises: each names the input at fault and the fix."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose.

    `message` says what is wrong (naming the input and what was expected);
    `hint` says what to do about it. Both reach the user as they are: in a
    panel's error card, and as `{"error": ..., "hint": ...}` from the CLI.
    """

    # The same fix in the command line's words, where `hint` names a Python call
    # (`wb.save_mapping()` -> `edge-workbench map --project DIR`): the CLI shows it instead.
    cli_hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def with_cli(self, cli_hint: str) -> "WorkbenchError":
        """Sets the command-line form of the fix; returns the error (`raise E(...).with_cli(...)`)."""
        self.cli_hint = cli_hint
        return self

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message

    def to_json(self) -> dict:
        return {"error": self.message, "hint": self.hint, "kind": type(self).__name__}


class BlueprintError(WorkbenchError):
    """An architecture that cannot be read, edited as asked, or built."""


class MappingError(WorkbenchError):
    """A weight mapping that names tensors the checkpoint lacks, or cannot fill the model."""
