"""Errors that reach the user as one line: what was wrong and where (file, row, field)."""

import json


class UserError(Exception):
    """Bad input or environment the user can fix; the CLI prints it without a traceback."""


class DataError(UserError):
    """A data file or row does not meet its contract."""


# A message longer than this is cut: a fuzzed or corrupt input can be megabytes long, and the
# error that quotes it must still fit on one terminal line.
MAX_MESSAGE_CHARS = 500


def one_line(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as a single printable line: control characters (newlines included) and lone
    surrogates from undecodable input are escaped, and the middle of a very long text is cut."""
    chars = []
    for char in str(text):
        if char.isprintable() or char == " ":
            chars.append(char)
        else:
            chars.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
    line = "".join(chars)
    if len(line) > limit:
        half = limit // 2
        line = f"{line[:half]} ... {line[-half:]}"
    return line


def decode_utf8(data: bytes, where: str, error: type[Exception] = DataError) -> str:
    """``data`` as text, a leading BOM dropped; bytes that are not UTF-8 raise ``error`` naming
    the line, instead of the codec's traceback or a silently guessed encoding."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{where} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def parse_json_object(text: str, what: str) -> dict:
    """``text`` as a JSON object; anything else raises one :class:`DataError` line that starts
    with ``what`` (the file, row and field it came from)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{what} is nested too deeply") from None
    if not isinstance(parsed, dict):
        raise DataError(f"{what} must be a JSON object")
    return parsed
