"""What a document is, apart from where it is read: plain text, or a chat conversation.

A reader finds a value (a JSON field, a parquet cell, a text file) and hands it to the run's document
kind, which turns it into a document or refuses it with a reason. Chat mode is this one choice, made
once per run, instead of a flag every reader consults.
"""

from __future__ import annotations

from pytrain.data import chat

OK, BLANK, BAD_JSON, MISSING_FIELD, NOT_STRING, EMPTY_TEXT, BAD_CONVERSATION, TOO_LARGE = range(8)
REASON_NAMES = {BAD_JSON: "bad_json", MISSING_FIELD: "missing_field", NOT_STRING: "not_a_string",
                BAD_CONVERSATION: "bad_conversation", TOO_LARGE: "too_large"}


class Refused(ValueError):
    """A value that is not a usable document: `code` (a reason above) and a message naming the problem."""

    def __init__(self, code: int, detail: str):
        super().__init__(detail)
        self.code = code


def size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


class TextDocuments:
    """Every value is one document: a non-empty string. The native JSON extractor can read these itself."""

    name = "text"
    native_json = True

    def document(self, value, field: str, max_bytes: int):
        """The document, or None for an empty one; raises Refused."""
        if not isinstance(value, str):
            raise Refused(NOT_STRING, f"field {field} is a {type(value).__name__}, not a string")
        if not value:
            return None
        if len(value) > max_bytes // 4 and len(value.encode("utf-8", "replace")) > max_bytes:
            size = len(value.encode("utf-8", "replace"))
            raise Refused(TOO_LARGE, f"document of {size_text(size)} is over the --max-doc-mb limit ({size_text(max_bytes)})")
        return value


class ChatDocuments:
    """Every value is a conversation (a messages list or the `User: ...` text form), rendered into
    (text, trained) segments by pytrain.data.chat."""

    name = "chat"
    native_json = False  # conversations are nested objects: lines go through Python's json

    def __init__(self, eos_token: str):
        self.eos_token = eos_token

    def document(self, value, field: str, max_bytes: int):
        try:
            turns = chat.text_to_turns(value, self.eos_token) if isinstance(value, str) else chat.messages_to_turns(value)
            return chat.render(turns)
        except chat.ChatFormatError as error:
            raise Refused(BAD_CONVERSATION, str(error)) from None
