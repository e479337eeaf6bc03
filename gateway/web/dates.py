"""Dates on the referral form as the source writes them, read back on the server.

Chromium's ``<input type=date>`` draws its field in the browser's locale, not the hospital's (a UK source on a
US-English browser got mm/dd/yyyy), so the form's dates are text fields in the source's own format: the order
from ``sources[].date_order`` or its ``locale`` (:attr:`gateway.config.SourceConfig.day_first`), the separator
from the locale's language. The server parses what was typed; a date it cannot read gets a message next to its
field that shows the format, and the text stays as typed. ISO dates (2026-12-07) are read too, whatever the
locale (pasted from elsewhere).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

# The separator a language writes numeric dates with; "/" for the others.
_SEPARATORS = {"de": ".", "da": ".", "fi": ".", "nb": ".", "no": ".", "pl": ".", "ru": ".", "cs": ".", "sk": ".",
               "tr": ".", "uk": ".", "hu": ".", "ro": ".", "hr": ".", "sl": ".", "et": ".", "lv": ".",
               "nl": "-"}
_YEAR_FIRST = {"sv", "lt", "zh", "ja", "ko"}  # languages writing numeric dates year first (2026-12-07)
_ISO = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_EXAMPLE = dt.date(1959, 1, 19)  # day and month differ: the example shows which comes first


@dataclass(frozen=True)
class DateFormat:
    """How a source writes a date: ``order`` of day, month, year (``dmy``, ``mdy`` or ``ymd``) and separator."""

    order: str
    separator: str

    @classmethod
    def of(cls, locale: str, day_first: bool) -> DateFormat:
        language = locale.split("-", 1)[0]
        if language in _YEAR_FIRST:
            return cls("ymd", "-")
        return cls("dmy" if day_first else "mdy", _SEPARATORS.get(language, "/"))

    @property
    def pattern(self) -> str:
        """``dd/mm/yyyy``, ``mm/dd/yyyy``, ``dd.mm.yyyy``, ``yyyy-mm-dd``."""
        parts = {"d": "dd", "m": "mm", "y": "yyyy"}
        return self.separator.join(parts[letter] for letter in self.order)

    @property
    def example(self) -> str:
        return self.written(_EXAMPLE.isoformat())

    def written(self, iso: str) -> str:
        """An ISO date as the source writes it; anything else as it is."""
        try:
            day = dt.date.fromisoformat(iso)
        except ValueError:
            return iso
        parts = {"d": f"{day.day:02d}", "m": f"{day.month:02d}", "y": f"{day.year:04d}"}
        return self.separator.join(parts[letter] for letter in self.order)

    def parse(self, text: str) -> str:
        """The ISO date (``YYYY-MM-DD``) of ``text`` written in this format (or in ISO).

        Raises:
            ValueError: not a date in this format, with a message to show next to the field.
        """
        text = text.strip()
        iso = _ISO.match(text)
        if iso:
            numbers = {"y": iso.group(1), "m": iso.group(2), "d": iso.group(3)}
        else:
            parts = re.split(r"\s*[./\-]\s*", text)
            if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
                raise ValueError(f"write the date as {self.pattern}, e.g. {self.example}")
            numbers = dict(zip(self.order, parts, strict=True))
        if len(numbers["y"]) != 4:
            raise ValueError(f"write the year with four digits ({self.pattern}, e.g. {self.example})")
        try:
            return dt.date(int(numbers["y"]), int(numbers["m"]), int(numbers["d"])).isoformat()
        except ValueError:
            raise ValueError(f"there is no such date: write it as {self.pattern}, e.g. {self.example}") from None


ISO_DATES = DateFormat("ymd", "-")
