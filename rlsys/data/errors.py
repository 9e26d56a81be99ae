"""DataError, in a module of its own so every rlsys.data module can import it without importing
the package (whose __init__ imports them)."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """A bad dataset row, image or file.

    The message is one line, ``<file>: line <n>: <field>: <reason>`` like the config errors,
    e.g. ``data/train.jsonl: line 18: images[0]: image file 'x.png' not found``. Text files
    (JSONL) give the 1-based line, other formats the 0-based row; parts that are unknown are
    left out. The parts are kept as attributes so callers (skip mode, logs) can use them.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: Optional[str] = None,
        row: Optional[int] = None,
        field: Optional[str] = None,
        line: Optional[int] = None,
    ):
        self.reason = reason
        self.source = source
        self.row = row
        self.field = field
        self.line = line
        super().__init__(f"{self.where}: {reason}" if self.where else reason)

    @property
    def where(self) -> str:
        """The location part of the message: ``<file>: line <n>: <field>`` (known parts only)."""
        row = f"line {self.line}" if self.line is not None else None if self.row is None else f"row {self.row}"
        return ": ".join(str(part) for part in (self.source, row, self.field) if part is not None)

    def located(
        self,
        source: Optional[str] = None,
        row: Optional[int] = None,
        field: Optional[str] = None,
        line: Optional[int] = None,
    ) -> "DataError":
        """A copy with missing location parts filled in (inner helpers don't know the row)."""
        return DataError(
            self.reason,
            source=self.source if self.source is not None else source,
            row=self.row if self.row is not None else row,
            field=self.field if self.field is not None else field,
            line=self.line if self.line is not None else line,
        )
