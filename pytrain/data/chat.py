"""Chat / instruction data: conversations -> text segments marked trained or not.

Two input forms become the same list of turns:
- `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]}`
- the text form `User: ...\\n\\nAgent: ...<|endoftext|>` (System: turns allowed too).

Both are rendered with one template, `System: ...\\n\\nUser: ...\\n\\nAgent: ...<eos>`:
every assistant turn is followed by the EOS token, so a model trained on it stops after
its answer. Only the assistant's content and that EOS are trained; role headers and the
other turns are context (loss-masked). A conversation that does not end with an
assistant turn still ends with EOS, masked, so every packed document ends with EOS.
"""

from __future__ import annotations

import re

ROLE_HEADERS = {"system": "System", "user": "User", "assistant": "Agent"}
_ROLE_ALIASES = {"agent": "assistant", "human": "user", "gpt": "assistant", "bot": "assistant"}
_TEXT_TURN = re.compile(r"(?:^|\n\n)(System|User|Agent):[ ]?")


class ChatFormatError(ValueError):
    """A conversation that cannot be used; the message names the problem (no file/line)."""


def _clean(text: str) -> str:
    """Replace lone surrogates (legal in JSON escapes, illegal in UTF-8) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def messages_to_turns(messages) -> list[tuple[str, str]]:
    """Validate a `messages` list into (role, content) pairs with canonical role names."""
    if not isinstance(messages, list):
        raise ChatFormatError(f"messages is a {type(messages).__name__}, not a list")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"messages[{i}] is a {type(message).__name__}, not an object")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            raise ChatFormatError(f"messages[{i}] has no string 'role'")
        role = _ROLE_ALIASES.get(role.lower(), role.lower())
        if role not in ROLE_HEADERS:
            raise ChatFormatError(f"messages[{i}].role {message['role']!r} is not one of system, user, assistant")
        if not isinstance(content, str):
            raise ChatFormatError(f"messages[{i}] has no string 'content'")
        turns.append((role, _clean(content)))
    return turns


def text_to_turns(text: str, eos_token: str) -> list[tuple[str, str]]:
    """Parse the `User: ...\\n\\nAgent: ...<eos>` text form."""
    markers = list(_TEXT_TURN.finditer(text))
    if not markers or markers[0].start() != 0:
        raise ChatFormatError("text form must start with 'User:', 'Agent:' or 'System:'")
    turns = []
    for marker, following in zip(markers, markers[1:] + [None]):
        content = text[marker.end(): following.start() if following else len(text)]
        content = content.rstrip()
        if content.endswith(eos_token):
            content = content[: -len(eos_token)].rstrip()
        role = {"System": "system", "User": "user", "Agent": "assistant"}[marker.group(1)]
        turns.append((role, _clean(content)))
    return turns


def render(turns: list[tuple[str, str]]) -> list[tuple[str | None, bool]]:
    """The template as (text, trained) segments; None stands for the EOS token (added by id)."""
    if not any(role == "assistant" for role, _ in turns):
        raise ChatFormatError("conversation has no assistant turn, so nothing would be trained")
    segments: list[tuple[str | None, bool]] = []
    context = ""
    for i, (role, content) in enumerate(turns):
        header = f"{ROLE_HEADERS[role]}: "
        prefix = "" if i == 0 else "\n\n"
        if role == "assistant":
            segments.append((context + prefix + header, False))
            segments.append((content, True))
            segments.append((None, True))
            context = ""
        else:
            context += prefix + header + content
    if context:
        segments.append((context, False))
        segments.append((None, False))
    return [(text, trained) for text, trained in segments if text != ""]
