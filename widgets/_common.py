"""Small rendering helpers the panels share."""

from __future__ import annotations

OK, BAD = "#2e7d32", "#c62828"


def message(text: str, error: bool = False) -> str:
    """The one-line status message under a panel's buttons (text is HTML)."""
    return f"<div class='ewb-message' style='color:{BAD if error else OK};white-space:pre-wrap'>{text}</div>"
