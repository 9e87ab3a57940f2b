"""Text from outside (file names, paths, messages that quote them) made safe
for one line of a terminal, a log or a Markdown table."""
from __future__ import annotations

def shown(text: object) -> str:
    """Every character that is not printable (a newline, a carriage return,
    an escape sequence) as a Python escape, so that a file named
    'x\\nPASSED.jpg' cannot start a line of its own."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def md_cell(text: object) -> str:
    """shown(), with '|' escaped so that a name cannot open a table column."""
    return shown(text).replace("|", "\\|")


def md_table_head(*columns: str) -> list[str]:
    """The two lines that open a Markdown table with these column titles."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
