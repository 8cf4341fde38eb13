"""pytrain._native.extract_json_field against Python's json module (strict), line by line.

The reference is json.loads on the line decoded as UTF-8 (which, like the extractor, reads NaN/Infinity/-Infinity), followed
by the path lookup and by replacing lone surrogates with U+FFFD (Python keeps them; we cannot, the text must be
valid UTF-8). Raw ill-formed UTF-8 inside strings is checked against bytes.decode("utf-8", "replace").
"""

import json
import mmap
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytrain._native import extract_json_field, index_lines

OK, BLANK, BAD_JSON, MISSING_FIELD, NOT_STRING, EMPTY_TEXT = range(6)


# ----------------------------------------------------------------------------------------------- reference
def replace_lone_surrogates(text: str) -> str:
    # json.loads already joined every escaped surrogate pair, so any surrogate left is unpaired.
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def reference(line: bytes, path) -> tuple[int, str | None]:
    body = line[:-1] if line.endswith(b"\n") else line
    if line.endswith(b"\r\n"):
        body = body[:-1]
    if not body.strip(b" \t\r\n"):
        return BLANK, None
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return BAD_JSON, None
    for step in path:
        if isinstance(step, str):
            if not isinstance(value, dict) or step not in value:
                return MISSING_FIELD, None
        elif not isinstance(value, list) or step >= len(value):
            return MISSING_FIELD, None
        value = value[step]
    if not isinstance(value, str):
        return NOT_STRING, None
    if value == "":
        return EMPTY_TEXT, None
    return OK, replace_lone_surrogates(value)


def run(lines: list[bytes], path, threads=1):
    """extract_json_field over the lines joined by '\n' (each line given without its terminator)."""
    buf = b"".join(line + b"\n" for line in lines)
    starts = index_lines(buf)
    assert len(starts) == len(lines) + 1
    texts, status, reasons = extract_json_field(buf, starts, path, threads)
    assert status.dtype == np.uint8 and len(texts) == len(reasons) == len(lines)
    return texts, status.tolist(), reasons


def check_against_reference(lines: list[bytes], path, threads=1):
    texts, status, reasons = run(lines, path, threads)
    for line, text, st_, reason in zip(lines, texts, status, reasons):
        want_status, want_text = reference(line + b"\n", path)
        assert (st_, text) == (want_status, want_text), (line, reason)
        assert (reason == "") == (st_ in (OK, BLANK)), (line, reason)


# ----------------------------------------------------------------------------------------------- examples
def test_statuses_and_reasons():
    lines = [
        b'{"text": "hello"}',
        b"",
        b" \t ",
        b'{"text": "a" "b"}',
        b'{"id": 1}',
        b'{"text": 5}',
        b'{"text": ""}',
        b'{"text": null}',
        b'{"text": {"a": 1}}',
        b'{"text": [1]}',
        b'{"text": true}',
    ]
    texts, status, reasons = run(lines, ["text"])
    assert status == [OK, BLANK, BLANK, BAD_JSON, MISSING_FIELD, NOT_STRING, EMPTY_TEXT, NOT_STRING, NOT_STRING,
                      NOT_STRING, NOT_STRING]
    assert texts == ["hello"] + [None] * 10
    assert reasons[:3] == ["", "", ""]
    assert reasons[3] == "invalid JSON at column 14: expected ',' or '}' after object member"
    assert reasons[4] == "missing field .text"
    assert reasons[5] == "field .text is a number, not a string"
    assert reasons[6] == "field .text is an empty string"
    assert reasons[7:] == ["field .text is null, not a string", "field .text is an object, not a string",
                           "field .text is an array, not a string", "field .text is a boolean, not a string"]


def test_nested_paths_and_missing_reasons():
    lines = [
        b'{"meta": {"body": "deep"}}',
        b'{"meta": {"title": "x"}}',
        b'{"meta": "flat"}',
        b'["not", "an", "object"]',
        b'{"messages": [{"content": "first"}, {"content": "second"}]}',
    ]
    texts, status, reasons = run(lines, ["meta", "body"])
    assert texts[0] == "deep" and status[:4] == [OK, MISSING_FIELD, MISSING_FIELD, MISSING_FIELD]
    assert reasons[1] == "missing field .meta.body"
    assert reasons[2] == "missing field .meta.body (field .meta is a string, not an object)"
    assert reasons[3] == "missing field .meta.body (the line is an array, not an object)"
    assert run(lines[4:], ["messages", 1, "content"])[0] == ["second"]
    texts, status, reasons = run(lines[4:], ["messages", 2, "content"])
    assert status == [MISSING_FIELD]
    assert reasons == ["missing field .messages[2].content (field .messages has 2 elements)"]
    assert run([b'"top"', b"3"], [])[:2] == (["top", None], [OK, NOT_STRING])


def test_keys_match_after_unescaping_and_last_duplicate_wins():
    lines = [
        b'{"t\\u0065xt": "escaped key"}',
        b'{"text": "first", "text": "second"}',
        b'{"text": "first", "text": 2}',
        b'{"text": 1, "text": "second"}',
        b'{"meta": {"body": "a"}, "meta": {"other": 1}}',
        b'{"meta": {"other": 1}, "meta": {"body": "b"}}',
        b'{"caf\xc3\xa9": "raw key", "text": "t"}',
    ]
    assert run(lines[:4], ["text"])[0] == ["escaped key", "second", None, "second"]
    texts, status, _ = run(lines[4:6], ["meta", "body"])
    assert (texts, status) == ([None, "b"], [MISSING_FIELD, OK])
    assert run(lines[6:], ["café"])[0] == ["raw key"]
    assert run([b'{"caf\\u00e9": "escaped"}'], ["café"])[0] == ["escaped"]


def test_escapes_and_surrogates():
    cases = {
        b'"\\"\\\\\\/\\b\\f\\n\\r\\t"': "\"\\/\b\f\n\r\t",
        b'"\\u00e9\\u4e2d\\uFFFF\\u0000"': "\u00e9\u4e2d\uffff\x00",
        b'"\\ud83d\\ude00"': "\U0001F600",  # escaped pair -> one astral character
        b'"a\\ud83dz"': "a\ufffdz",  # lone high
        b'"a\\ude00z"': "a\ufffdz",  # lone low
        b'"\\ud83d\\ud83d\\ude00"': "\ufffd\U0001F600",  # high, then a complete pair
        b'"\\ude00\\ud83d"': "\ufffd\ufffd",  # low then high: two lone surrogates
        b'"\\ud83d\\u0041"': "\ufffdA",
        b'"\\ud83d"': "\ufffd",
    }
    lines = [b'{"text": ' + quoted + b"}" for quoted in cases]
    texts, status, _ = run(lines, ["text"])
    assert status == [OK] * len(cases)
    assert texts == list(cases.values())
    check_against_reference(lines, ["text"])


@pytest.mark.parametrize("raw", [
    b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98", b"\xe2\x82",
    b"\x80\x80abc", b"ok\xc3", b"\xf8\x88\x80\x80\x80", b"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
])
def test_raw_ill_formed_utf8_is_replaced_like_python(raw):
    texts, status, _ = run([b'{"text": "' + raw + b'", "k": "' + raw + b'"}'], ["text"])
    assert status == [OK] and texts == [raw.decode("utf-8", "replace")]


def test_crlf_and_unterminated_last_line():
    buf = b'{"text": "a"}\r\n{"text": "b"}\r\n\r\n{"text": "c"}'
    texts, status, _ = extract_json_field(buf, index_lines(buf), ["text"])
    assert texts == ["a", "b", None, "c"] and status.tolist() == [OK, OK, BLANK, OK]
    # A lone '\r' is JSON whitespace; other control characters between tokens are not.
    assert run([b'{"text": "a"}\r', b'{"text":\x0c"a"}'], ["text"])[1] == [OK, BAD_JSON]


MALFORMED = [
    b'{"text": "a",}', b'{"text": "a"', b'{"text" "a"}', b"{'text': 'a'}", b'{"text": NaNa}', b'{"text": -NaN}',
    b'{"text": Infinit}', b'{"text": "a\tb"}', b'{"text": "a\x00b"}', b'{"text": "a"} x', b'{"text": "a"}}',
    b'{"text": "a\\x"}', b'{"text": "\\u12"}', b'{"text": "\\u12g4"}', b'{"text": tru}', b'{"text": nul}',
    b'{"text": 01}', b'{"text": 1.}', b'{"text": .5}', b'{"text": 1e}', b'{"text": -}', b'{"text": +1}',
    b'[1, 2,]', b"[", b"]", b"{", b"}", b'"abc', b'"abc\\"', b"\xef\xbb\xbf{}", b'{"text": "a"}\x0c', b"{,}",
    b'{"a" : 1 , }', b"[1 2]", b'{"text": True}', b'{"text": "\\', b"\x00", b"\xc3\xa9",
]


def test_malformed_lines_are_bad_json_like_python():
    texts, status, reasons = run(MALFORMED, ["text"])
    assert status == [BAD_JSON] * len(MALFORMED)
    assert all(r.startswith("invalid JSON at column ") for r in reasons)
    assert texts == [None] * len(MALFORMED)
    for line in MALFORMED:
        assert reference(line, ["text"])[0] == BAD_JSON, line


def test_error_columns_match_python():
    lines = [b'{"a": 1 "b": 2}', b'{"a":1,}', b'{"\xc3\xa9\xc3\xa9": 1, x}', b'{"a": "x\ty"}', b'{"a": "abc',
             b'{"a": 1} x', b'{"a" 1}', b'[1, 2 3]']
    _, _, reasons = run(lines, ["a"])
    for line, reason in zip(lines, reasons):
        with pytest.raises(json.JSONDecodeError) as err:
            json.loads(line.decode())
        assert reason.startswith(f"invalid JSON at column {err.value.colno}: "), (line, reason, err.value)


def test_nesting_limit():
    ok = b'{"text": "x", "deep": ' + b"[" * 511 + b"]" * 511 + b"}"  # 512 levels with the outer object
    too_deep = b'{"text": "x", "deep": ' + b"[" * 512 + b"]" * 512 + b"}"
    absurd = b"[" * 200_000
    texts, status, reasons = run([ok, too_deep, absurd], ["text"])
    assert status == [OK, BAD_JSON, BAD_JSON] and texts[0] == "x"
    assert reasons[1] == "invalid JSON at column 534: nesting deeper than 512 levels"  # the 512th "["
    assert reasons[2].endswith("nesting deeper than 512 levels")


def test_numbers_and_literals_are_validated_not_converted():
    good = [b'{"n": [0, -0, 1.5e-300, 2E+10, 1e999, -12.25, 123456789012345678901234567890], "b": [true, false, null],'
            b' "text": "ok"}']
    assert run(good, ["text"])[:2] == (["ok"], [OK])
    check_against_reference(good, ["text"])


# ----------------------------------------------------------------------------------------------- inputs and API
def test_accepts_bytes_numpy_and_readonly_mmap(tmp_path):
    data = b'{"text": "one"}\n{"text": "two"}\n'
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        assert view.readonly
        texts, _, _ = extract_json_field(view, index_lines(view), ["text"])
        view.release()
    assert texts == ["one", "two"]
    arr = np.frombuffer(data, dtype=np.uint8)
    assert extract_json_field(arr, index_lines(arr), ("text",))[0] == ["one", "two"]
    # starts may describe any sub-range of the buffer
    assert extract_json_field(data, np.array([16, 32]), ["text"])[0] == ["two"]
    assert extract_json_field(data, [0], ["text"])[0] == []


def test_argument_errors():
    data = b'{"text": "a"}\n'
    with pytest.raises(ValueError, match="non-decreasing"):
        extract_json_field(data, np.array([5, 0, 14]), ["text"])
    with pytest.raises(ValueError, match="within the buffer"):
        extract_json_field(data, np.array([0, 99]), ["text"])
    with pytest.raises(ValueError, match="at least 1"):
        extract_json_field(data, np.array([], dtype=np.int64), ["text"])
    with pytest.raises(TypeError, match="integer array"):
        extract_json_field(data, np.array([0.0, 14.0]), ["text"])
    with pytest.raises(ValueError, match="path index must be >= 0"):
        extract_json_field(data, np.array([0, 14]), ["text", -1])
    with pytest.raises(TypeError, match="path elements"):
        extract_json_field(data, np.array([0, 14]), [1.5])
    with pytest.raises(ValueError, match="threads"):
        extract_json_field(data, np.array([0, 14]), ["text"], -1)
    with pytest.raises(TypeError):
        extract_json_field("not bytes", np.array([0, 1]), ["text"])


# ----------------------------------------------------------------------------------------------- threads
def _mixed_corpus(seed: int, n_lines: int) -> list[bytes]:
    rng = random.Random(seed)
    words = ["alpha", "béta", "γάμμα", "東京", "😀", 'say "hi"', "tab\there", "new\nline", "\ud800lone",
             "x" * 300]
    lines = []
    for i in range(n_lines):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        doc = {"id": i, "meta": {"text": text}, "text": text}
        kind = rng.random()
        if kind < 0.05:
            lines.append(b"")
        elif kind < 0.10:
            lines.append(json.dumps(doc).encode()[:-3])  # truncated
        elif kind < 0.15:
            lines.append(json.dumps({"id": i}).encode())
        else:
            lines.append(json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
                         .replace(b"\xed\xa0\x80", b"\\ud800"))
    return lines


def test_thread_counts_give_identical_results():
    lines = _mixed_corpus(0, 6000)  # ~1.3 MB: enough for several 64 KiB+ worker shares
    buf = b"".join(line + b"\n" for line in lines)
    assert len(buf) > 1_000_000
    starts = index_lines(buf)
    base_texts, base_status, base_reasons = extract_json_field(buf, starts, ["meta", "text"], 1)
    for threads in (2, 4, 7, 0, 100_000):
        texts, status, reasons = extract_json_field(buf, starts, ["meta", "text"], threads)
        assert texts == base_texts and reasons == base_reasons
        np.testing.assert_array_equal(status, base_status)
    for line, text, st_ in zip(lines, base_texts, base_status.tolist()):
        assert (st_, text) == reference(line + b"\n", ["meta", "text"])


# ----------------------------------------------------------------------------------------------- hypothesis
json_scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30)
                | st.floats() | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
# Any code point, including lone surrogates and astral characters.
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
                   max_size=40)
SEPARATORS = [(",", ":"), (", ", ": "), (" ,\t", " :\r ")]


def _dump(value, ensure_ascii: bool, separators) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii, separators=separators).encode("utf-8")


@st.composite
def documents_with_paths(draw):
    """A JSON value with a target (usually a string) planted at a random path, and that path; one time in four the
    path is perturbed so that it misses, overshoots or stops early."""
    target = draw(st.one_of(any_text, any_text, json_values))
    path = draw(st.lists(st.text(max_size=4) | st.integers(0, 3), min_size=1, max_size=4))  # [] is tested below
    value = target
    for step in reversed(path):  # wrap the target from the inside out
        if isinstance(step, str):
            siblings = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3))
            siblings[step] = value
            value = dict(draw(st.permutations(list(siblings.items()))))
        else:
            items = draw(st.lists(json_values, min_size=step + 1, max_size=step + 3))
            items[step] = value
            value = items
    if path and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(0, len(path) - 1))
        path[i] = draw(st.text(max_size=4) | st.integers(0, 5))
    elif draw(st.integers(0, 7)) == 0:
        path = path + [draw(st.text(max_size=2) | st.integers(0, 2))]
    return value, path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents_with_paths(), st.booleans(), st.sampled_from(SEPARATORS))
def test_hypothesis_documents_match_json(doc_and_path, ensure_ascii, separators):
    value, path = doc_and_path
    try:
        line = _dump(value, ensure_ascii, separators)
    except UnicodeEncodeError:  # a lone surrogate can only be written escaped
        line = _dump(value, True, separators)
    check_against_reference([line], path)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(any_text, st.booleans()), min_size=1, max_size=8))
def test_hypothesis_texts_roundtrip(items):
    lines = []
    for text, ensure_ascii in items:
        try:
            lines.append(_dump({"id": 1, "text": text}, ensure_ascii, (",", ":")))
        except UnicodeEncodeError:
            lines.append(_dump({"id": 1, "text": text}, True, (",", ":")))
    check_against_reference(lines, ["text"])


# Raw string contents: arbitrary bytes except the three that end or escape a JSON string body. Besides random bytes
# and well-formed text, strings of the bytes at the edges of UTF-8's lead and continuation ranges, which is where
# overlong, surrogate, out-of-range and truncated sequences live.
EDGE_BYTES = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
              0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
raw_string_bytes = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=10).map(lambda t: t.encode("utf-8")),
    st.lists(st.sampled_from(EDGE_BYTES), max_size=12).map(bytes),
).map(lambda b: bytes(c for c in b if c >= 0x20 and c not in b'"\\'))
ESCAPES = [b"\\n", b"\\u00e9", b"\\ud83d", b"\\ude00", b'\\"', b"\\/"]


def reference_raw(segments: list[bytes]) -> str:
    """Runs of raw bytes through bytes.decode('utf-8', 'replace'), escapes through json.loads; then adjacent escaped
    surrogates pair up (the utf-16 round trip) and the lone ones become U+FFFD."""
    out, raw = [], b""
    for seg in segments + [None]:
        if seg is not None and seg not in ESCAPES:
            raw += seg
            continue
        out.append(raw.decode("utf-8", "replace"))
        raw = b""
        if seg is not None:
            out.append(json.loads(b'"' + seg + b'"'))
    paired = "".join(out).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return replace_lone_surrogates(paired)


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_string_bytes | st.sampled_from(ESCAPES), min_size=1, max_size=6))
def test_hypothesis_raw_bytes_decode_like_python_replace(segments):
    body = b"".join(segments)
    texts, status, _ = run([b'{"text": "' + body + b'"}'], ["text"])
    if body:
        assert status == [OK] and texts == [reference_raw(segments)]
    else:
        assert status == [EMPTY_TEXT]


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 200), st.binary(min_size=1, max_size=3).map(lambda b: bytes(c & 0x7F for c in b)))
def test_hypothesis_corrupted_lines_agree_on_validity(value, cut, junk):
    line = _dump(value, True, (",", ":"))  # ASCII, and the junk too: the line stays valid UTF-8
    corrupted = [line[:cut % (len(line) + 1)], line + junk, junk + line, line[:cut % (len(line) + 1)] + junk]
    corrupted = [c for c in corrupted if b"\n" not in c]
    texts, status, _ = run(corrupted, [])
    for c, st_, text in zip(corrupted, status, texts):
        assert (st_, text) == reference(c + b"\n", []), c


def test_non_finite_numbers_are_read_like_python():
    lines = [b'{"text": "a", "score": NaN}', b'{"s": [Infinity, -Infinity], "text": "b"}', b'{"text": NaN}']
    texts, status, _ = run(lines, ["text"])
    assert texts == ["a", "b", None] and status == [OK, OK, NOT_STRING]
    assert [reference(line, ["text"])[0] for line in lines] == status
