"""The one error type the command line turns into exit code 2."""


class UsageError(Exception):
    """Bad usage or bad input: reported as one message on stderr, exit code 2."""


_UNPRINTABLE = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029])
_ESCAPES = {ord(c): c.encode("unicode_escape").decode("ascii") for c in _UNPRINTABLE}


def printable(text: object) -> str:
    """``text`` safe to print on one line of any terminal: control characters (newlines,
    ANSI escapes) written as escapes, and bytes of a file name that are not UTF-8 as
    ``\\udcXX`` (a strict UTF-8 stdout could not print them).

    >>> printable("rose\\n\\x1b[31mred")
    'rose\\\\n\\\\x1b[31mred'
    """
    escaped = str(text).translate(_ESCAPES)
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")
