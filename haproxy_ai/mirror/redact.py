"""Secret removal for mirror records, log lines and error messages.

A :class:`Redactor` is built once from :class:`~haproxy_ai.settings.RedactSettings` and then used for
every proxied request, on the event loop: everything that can be prepared (the combined pattern regex,
lowercased name sets, the body-field path trie, the truncated-body key regex) is prepared in
``__init__``, and each call does as few regex passes as its contract allows. A Redactor is immutable
and thread-safe (compiled regexes are), so log handlers on other threads may share it.

What is redacted, by channel:

* headers: the whole value of a listed header (case-insensitive name); patterns in every other value.
* query strings: the value of a listed parameter (matched by its percent-decoded, lowercased name);
  patterns over the whole query.
* URLs: the userinfo password, listed query parameters, patterns.
* JSON: configured ``body_fields`` paths (whole values, whatever their type); patterns in every string
  value and every object key.
* other text: patterns (also next to a backslash escape, as in a logged repr).

Redaction is best effort against *known* shapes: a secret that matches no pattern and sits in no listed
header, parameter or field is kept. Non-UTF-8 (binary) bodies are returned unchanged.
"""

from __future__ import annotations

import json as _json
import logging
import re
from collections.abc import Iterable
from typing import Any, overload
from urllib.parse import unquote

from ..settings import RedactSettings

__all__ = ["RedactingFilter", "Redactor"]

# A leading global flag group, e.g. "(?i)"; inside an alternation it must become a scoped group
# "(?i:...)", since Python rejects global flags anywhere but at the very start of the whole regex.
_GLOBAL_FLAGS = re.compile(r"\A\(\?([aiLmsux]+)\)")
# Strings a pattern is tried on to reject those that can match "" (they would insert the replacement
# between characters). Not exhaustive -- a lookahead-only pattern still slips through -- but catches
# the usual mistakes (x*, x?, \b, ^, $).
_EMPTY_MATCH_PROBES = ("", "a", " ", "a b", "sk-x 1\n")

# Query parameter separators: "&", and ";" which some servers still accept. Splitting on both means a
# "key=..." smuggled after a ";" is redacted too.
_QUERY_SPLIT = re.compile(r"([&;])")
# scheme://authority -- the authority ends at the first "/", "?" or "#", as in urllib and HTTP clients.
_URL_AUTHORITY = re.compile(r"\A(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//([^/?#]*)")
# Inside free text (log lines, error messages): absolute URLs, and bare "?query" runs such as the
# request target in "GET /v1/models?key=... HTTP/1.1".
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>]+|\?[^\s"'<>#]+""")

# Leading whitespace (and a UTF-8 BOM) before a body's first meaningful character.
_LEADING = re.compile(r"[\s\ufeff]*")
_SSE_PREFIXES = ("data:", "event:", ":", "id:", "retry:")
# SSE line terminators are exactly CRLF, CR and LF (str.splitlines would also split on U+2028 etc.,
# which may appear raw inside a JSON payload). The capturing group keeps them in the split result.
_SSE_LINES = re.compile(r"(\r\n|\r|\n)")
# JSON tokens for the tolerant scan of a body that does not parse (truncated at the size cap): a
# string (possibly cut before its closing quote), a structural character, or a bare scalar.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.S)


class _Node:
    """One step of the body-field path trie. ``terminal``: a configured path ends here."""

    __slots__ = ("children", "star", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.terminal = False


_Nodes = tuple[_Node, ...]
_NO_NODES: _Nodes = ()


def _step(nodes: _Nodes, comp: str) -> tuple[bool, _Nodes]:
    """Follow key/index ``comp`` from every active node: (a path ends here, the nodes active below)."""
    out: list[_Node] = []
    for node in nodes:
        child = node.children.get(comp)
        if child is not None:
            out.append(child)
        if node.star is not None:
            out.append(node.star)
    if not out:
        return False, _NO_NODES
    return any(n.terminal for n in out), tuple(out)


def _json_key(token: str) -> str:
    """The object key a scanned string token stands for (unterminated and malformed ones included)."""
    if not token.startswith('"'):
        return token
    if len(token) < 2 or not token.endswith('"'):
        return token[1:]
    inner = token[1:-1]
    if "\\" in inner:
        try:
            decoded = _json.loads(token)
        except ValueError:
            return inner
        return decoded if isinstance(decoded, str) else inner
    return inner


# One escape inside a JSON string; a cut-off escape at the very end (\u00 or a lone \) matches the last
# alternative and is dropped.
_JSON_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt])|.?)', re.S)
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(m: re.Match[str]) -> str:
    """Lenient decoding of one JSON escape (for strings json.loads rejects)."""
    if m.group(1) is not None:
        return chr(int(m.group(1), 16))
    if m.group(2) is not None:
        return _SIMPLE_ESCAPES[m.group(2)]
    return ""


def _odd_backslashes_before_end(token: str) -> bool:
    """Whether the final quote of ``token`` is escaped (the string was cut right after a \\")."""
    count = 0
    i = len(token) - 2
    while i > 0 and token[i] == "\\":
        count += 1
        i -= 1
    return count % 2 == 1


# Backslash escapes as Python reprs and JSON write them, each with a same-length blank. Simple escapes,
# an escaped backslash among them, go first: in \\u0041 (a backslash, then "u0041") the second
# backslash must not start a \u escape. Fixed replacement strings keep each pass in C; a Python
# callback per escape was most of the time spent on an escape-heavy body.
_ESCAPE_BLANKS = tuple(
    (re.compile(escape), " " * width)
    for escape, width in (
        (r"""\\[nrtbfav\\'"/]""", 2),
        (r"\\u[0-9a-fA-F]{4}", 6),
        (r"\\U[0-9a-fA-F]{8}", 10),
        (r"\\x[0-9a-fA-F]{2}", 4),
        (r"\\[0-7]{3}", 4),
        (r"\\[0-7]{2}", 3),
        (r"\\[0-7]", 2),
    )
)


class _Frame:
    """An open container during the tolerant JSON scan."""

    __slots__ = ("expect_key", "index", "is_object", "key", "nodes")

    def __init__(self, is_object: bool, nodes: _Nodes) -> None:
        self.is_object = is_object
        self.nodes = nodes
        self.key = ""
        self.index = 0
        self.expect_key = is_object


class Redactor:
    """Replaces secrets in headers, query strings, URLs, JSON values, bodies and log messages.

    Every method returns a redacted copy and never raises on malformed input (bad percent-encoding,
    truncated JSON, undecodable bytes); only the constructor validates. Output that contained nothing
    to redact is equal to the input, except that :meth:`body` re-serialises JSON compactly.
    """

    __slots__ = (
        "_active",
        "_field_text",
        "_header_fields_seen",
        "_header_names",
        "_latin1_seen",
        "_listed_names_seen",
        "_literal_groups",
        "_literals",
        "_param_names",
        "_pattern",
        "_replacement",
        "_replacement_json",
        "_template",
        "_tree",
        "native_caches",
    )

    def __init__(
        self,
        *,
        headers: Iterable[str] = (),
        query_params: Iterable[str] = (),
        body_fields: Iterable[str] = (),
        patterns: Iterable[str] = (),
        replacement: str = "[REDACTED]",
    ) -> None:
        """Prepare everything a call needs.

        ``headers`` and ``query_params`` are names, matched case-insensitively. ``body_fields`` are
        dotted JSON paths: each component is an object key or a list index, ``*`` matches any key or
        index (a key containing "." cannot be named). ``patterns`` are regexes; each match is replaced
        wherever it appears. Raises ValueError for a pattern that does not compile, that can match the
        empty string, or for a replacement that cannot be encoded as UTF-8.
        """
        try:
            replacement.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"redact replacement {replacement!r} is not encodable as UTF-8") from exc
        self._replacement = replacement
        self._replacement_json = _json.dumps(replacement, ensure_ascii=False)
        # re.sub treats backslashes in a string replacement as group references; a literal template
        # keeps sub() on its fastest path (no Python callback per match).
        self._template = replacement.replace("\\", "\\\\")
        self._header_names = frozenset(h.strip().lower() for h in headers)
        # (raw name, raw value) -> (lowercased name, redacted value), for unlisted names only;
        # raw names of listed headers -> lowercased (their values are never kept).
        self._header_fields_seen: dict[Any, tuple[str, str]] = {}
        self._listed_names_seen: dict[Any, str] = {}
        self._latin1_seen: dict[bytes, str] = {}
        self._param_names = frozenset(p.strip().lower() for p in query_params)
        self._pattern = self._compile_patterns(tuple(patterns))
        self._literals, self._literal_groups = _group_literals(_required_literals(tuple(patterns)))
        self._tree, self._field_text = self._compile_fields(tuple(body_fields))
        self._active = self._pattern is not None or self._tree is not None
        # What the C record encoder (record.py) needs to prove a record has nothing to redact:
        # the header caches, every literal some pattern match must contain, and the listed
        # header names. None when that cannot be proved without Python (body fields, a pattern
        # with no such literal).
        scan = _required_literals(tuple(patterns)) if self._pattern is not None else ()
        self.native_caches: (
            tuple[dict[Any, tuple[str, str]], dict[Any, str], str, tuple[bytes, ...], frozenset[str]] | None
        ) = (
            (
                self._header_fields_seen,
                self._listed_names_seen,
                replacement,
                tuple(s.encode() for s in scan),
                self._header_names,
            )
            if self._tree is None and scan is not None and len(scan) <= 64 and all(s.isascii() for s in scan)
            else None
        )

    @classmethod
    def from_settings(cls, settings: RedactSettings) -> Redactor:
        """The Redactor for the ``mirror.redact`` config section."""
        return cls(
            headers=settings.headers,
            query_params=settings.query_params,
            body_fields=settings.body_fields,
            patterns=settings.patterns,
            replacement=settings.replacement,
        )

    @property
    def replacement(self) -> str:
        """What a redacted value becomes."""
        return self._replacement

    # -- construction helpers ---------------------------------------------------------------

    @staticmethod
    def _compile_patterns(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
        parts: list[str] = []
        for pattern in patterns:
            if not pattern:
                continue
            flags = _GLOBAL_FLAGS.match(pattern)
            if flags is not None:
                # In verbose mode a trailing "# comment" would swallow the closing parenthesis.
                end = "\n)" if "x" in flags.group(1) else ")"
                pattern = f"(?{flags.group(1)}:{pattern[flags.end() :]}{end}"
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redact pattern {pattern!r}: {exc}") from exc
            for probe in _EMPTY_MATCH_PROBES:
                if any(m.end() == m.start() for m in compiled.finditer(probe)):
                    raise ValueError(f"redact pattern {pattern!r} matches the empty string")
            parts.append(f"(?:{pattern})")
        if not parts:
            return None
        try:
            # One alternation: text() is a single C-level scan however many patterns there are.
            return re.compile("|".join(parts))
        except re.error as exc:  # e.g. the same (?P<name>...) in two patterns
            raise ValueError(f"redact patterns cannot be combined: {exc}") from exc

    @staticmethod
    def _compile_fields(body_fields: tuple[str, ...]) -> tuple[_Node | None, re.Pattern[str] | None]:
        root = _Node()
        last_keys: set[str] = set()
        for path in body_fields:
            path = path.strip()
            if not path:
                continue
            node = root
            components = path.split(".")
            for comp in components:
                if comp == "*":
                    if node.star is None:
                        node.star = _Node()
                    node = node.star
                else:
                    node = node.children.setdefault(comp, _Node())
            node.terminal = True
            named = [c for c in components if c != "*"]
            if named:
                last_keys.add(named[-1])
        if not root.children and root.star is None:
            return None, None
        field_text = None
        if last_keys:
            # How each key may be spelled inside JSON text: as is, and \u-escaped.
            spellings = {_json.dumps(k, ensure_ascii=ea)[1:-1] for k in last_keys for ea in (False, True)}
            names = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True))
            # "key": <string, possibly cut at the end of the text> or "key": <bare scalar>. Object and
            # array values cannot be delimited by a regex; the structural scan covers those.
            field_text = re.compile(
                rf'("(?:{names})"\s*:\s*)(?:"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[^\s,\]}}\[{{"]+)', re.S
            )
        return root, field_text

    # -- text, headers, queries, URLs --------------------------------------------------------

    def _may_match(self, value: str) -> bool:
        """False when no pattern can match: none of their required literals occur in ``value``.

        An alternation of patterns starting with ``\\b`` defeats the regex engine's literal search;
        a lowercase copy and a few substring checks cost a fraction of the scan on every record."""
        literals = self._literals
        if literals is None:
            return self._pattern is not None
        lowered = value.lower() if value.isascii() else value.translate(_CASE_FOLDS).lower()
        for literal in literals:
            if literal in lowered:
                return True
        for group in self._literal_groups:
            if group.search(lowered) is not None:
                return True
        return False

    def text(self, value: str) -> str:
        """``value`` with every match of every pattern replaced (one regex pass)."""
        if self._pattern is None or not self._may_match(value):
            return value
        return self._pattern.sub(self._template, value)

    def latin1_text(self, raw: bytes) -> str:
        """:meth:`text` of ``raw`` decoded as latin-1, remembered: for values that repeat (paths)."""
        seen = self._latin1_seen
        text = seen.get(raw)
        if text is None:
            text = self.text(raw.decode("latin-1"))
            if len(seen) >= _HEADER_CACHE_SIZE:
                seen.clear()
            seen[raw] = text
        return text

    def header(self, name: str, value: str) -> str:
        """The replacement when ``name`` (any case) is a listed header, else ``text(value)``."""
        if name.lower() in self._header_names:
            return self._replacement
        return self.text(value)

    def headers(self, pairs: Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """Redacted headers as a dict keyed by lowercased name (bytes are decoded as latin-1).

        A repeated header becomes one entry, its values joined with ", " in arrival order; each value
        is redacted on its own (as :meth:`header` does) before joining.
        """
        out: dict[str, str] = {}
        seen = self._header_fields_seen
        for pair in pairs:
            # Most fields repeat from request to request (content-type, user-agent, server): each
            # distinct field is decoded and scanned once, then costs one lookup.
            field = seen.get(pair)
            if field is None:
                field = self._header(pair)
            name, value = field
            if name in out:
                out[name] = f"{out[name]}, {value}"
            else:
                out[name] = value
        return out

    def _header(self, pair: tuple[str, str] | tuple[bytes, bytes]) -> tuple[str, str]:
        """(lowercased name, redacted value) of a field not in the cache; remembers it unless the
        name is listed (a secret's value is never kept)."""
        raw_name, raw_value = pair
        listed = self._listed_names_seen.get(raw_name)
        if listed is not None:
            return listed, self._replacement
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        if name in self._header_names:
            if len(self._listed_names_seen) < _HEADER_CACHE_SIZE:
                self._listed_names_seen[raw_name] = name
            return name, self._replacement
        field = name, self.text(raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value)
        seen = self._header_fields_seen
        if len(seen) >= _HEADER_CACHE_SIZE:
            seen.clear()  # bounded: unique values (dates, ids, lengths) would otherwise pile up
        seen[pair] = field
        return field

    def _params(self, query: str) -> str:
        """``query`` with the values of listed parameters replaced; everything else byte for byte.

        An unlisted parameter whose value hides a pattern match behind percent-encoding or "+"
        ("Bearer%20...") has its whole value replaced too, since a pass over the raw text cannot see it.
        """
        listed = self._param_names
        pattern = self._pattern
        if "=" not in query or not (listed or (pattern is not None and ("%" in query or "+" in query))):
            return query
        parts = _QUERY_SPLIT.split(query)
        changed = False
        # Even indices are parameters, odd ones the separators captured by the split.
        for i in range(0, len(parts), 2):
            raw_name, eq, raw_value = parts[i].partition("=")
            if not eq:
                continue  # a bare flag has no value to hide
            name = raw_name.replace("+", " ") if "+" in raw_name else raw_name
            # unquote() never raises: malformed escapes ("%zz", a trailing "%") are kept literally and
            # invalid UTF-8 becomes U+FFFD, which no listed name contains.
            if "%" in name:
                name = unquote(name, errors="replace")
            if name.lower() in listed:
                hide = True
            elif pattern is not None and ("%" in raw_value or "+" in raw_value):
                hide = pattern.search(unquote(raw_value.replace("+", " "), errors="replace")) is not None
            else:
                hide = False
            if hide:
                parts[i] = f"{raw_name}={self._replacement}"
                changed = True
        return "".join(parts) if changed else query

    def query(self, query: str) -> str:
        """A query string (without "?") with listed parameters' values replaced, then patterns.

        Names are compared percent-decoded ("+" as space) and lowercased, so ``API%5FKey=...`` is
        caught. Parameters are separated by "&" or ";"; the order, the separators, parameters without
        "=" and unlisted parameters are kept exactly as received -- except an unlisted parameter whose
        percent-decoded value contains a pattern match, whose whole value is replaced.
        """
        return self.text(self._params(query))

    def target(self, target: str) -> str:
        """An HTTP request target: ``text(path) + "?" + query(query)``, or ``text(target)`` without "?"."""
        path, sep, query = target.partition("?")
        if not sep:
            return self.text(target)
        return f"{self.text(path)}?{self.query(query)}"

    def _url(self, url: str) -> str:
        """``url`` with its userinfo password and listed parameters replaced; patterns not applied."""
        m = _URL_AUTHORITY.match(url)
        if m is not None:
            authority = m.group(1)
            # The last "@" ends the userinfo (as in urllib); the password follows the first ":".
            userinfo, at, host = authority.rpartition("@")
            if at:
                user, colon, _password = userinfo.partition(":")
                if colon:
                    authority = f"{user}:{self._replacement}@{host}"
            head = f"{url[: m.start(1)]}{authority}"
            rest = url[m.end() :]
        else:
            head, rest = "", url
        before_fragment, hash_, fragment = rest.partition("#")
        path, qmark, query = before_fragment.partition("?")
        if qmark:
            query = self._params(query)
        if hash_:
            # OAuth's implicit flow returns "#access_token=...": a fragment can carry parameters too.
            fragment = self._params(fragment)
        return f"{head}{path}{qmark}{query}{hash_}{fragment}"

    def url(self, url: str) -> str:
        """An absolute or relative URL with the password of ``user:password@`` replaced (the user is
        kept), query and fragment parameters redacted as :meth:`query` does, then patterns over it all."""
        return self.text(self._url(url))

    def message(self, message: str) -> str:
        """A log line or error message: URLs in it are redacted as :meth:`url` does (passwords and listed
        parameters), as are bare ``?query`` runs such as a logged request target; then patterns, also
        where a backslash escape of a repr ("\\n") is glued to a match."""
        if "://" in message or "?" in message:
            message = _URL_IN_TEXT.sub(self._message_url, message)
        return self._text_escapes(message)

    def _text_escapes(self, text: str) -> str:
        """:meth:`text`, also catching matches that a backslash escape next to them hides."""
        if not self._may_match(text):
            return text
        if "\\" in text:
            text = self._behind_escapes(text)
        return self.text(text)

    def _behind_escapes(self, message: str) -> str:
        """Redact matches that a backslash escape hides from a plain pass.

        Log lines often hold reprs: in ``'line\\nsk-...'`` the "n" of the escape glues onto the secret
        and defeats a leading ``\\b``. Escapes are blanked in a same-length view, the patterns run over
        the view, and what they match there is replaced in the message.
        """
        pattern = self._pattern
        if pattern is None:
            return message
        view = message
        for escape, blank in _ESCAPE_BLANKS:
            view = escape.sub(blank, view)
        pieces: list[str] = []
        pos = 0
        for m in pattern.finditer(view):
            pieces.append(message[pos : m.start()])
            pieces.append(self._replacement)
            pos = m.end()
        if not pieces:
            return message
        pieces.append(message[pos:])
        return "".join(pieces)

    def _message_url(self, m: re.Match[str]) -> str:
        found = m.group()
        if found.startswith("?"):
            return f"?{self._params(found[1:])}"
        return self._url(found)

    # -- JSON and bodies ---------------------------------------------------------------------

    def json(self, value: Any) -> Any:
        """A redacted copy of a JSON-like value; ``value`` itself is never modified.

        Values at configured ``body_fields`` paths become the replacement string (whatever their
        type); then patterns are applied to every other string and to every object key. dicts and
        lists (tuples become lists) are copied; other scalars are returned as they are. Two keys that
        redact to the same text collapse into one entry. Nesting deeper than the recursion limit
        raises RecursionError (:meth:`body` falls back to a text scan then).
        """
        if self._tree is None:
            return self._plain(value)
        return self._walk(value, (self._tree,))

    def _plain(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            text, plain = self.text, self._plain
            return {(text(k) if isinstance(k, str) else k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            plain = self._plain
            return [plain(v) for v in value]
        return value

    def _walk(self, value: Any, nodes: _Nodes) -> Any:
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                terminal, below = _step(nodes, key if isinstance(key, str) else str(key))
                new_key = self.text(key) if isinstance(key, str) else key
                if terminal:
                    out[new_key] = self._replacement
                elif below:
                    out[new_key] = self._walk(item, below)
                else:
                    out[new_key] = self._plain(item)
            return out
        if isinstance(value, list | tuple):
            items: list[Any] = []
            for index, item in enumerate(value):
                terminal, below = _step(nodes, str(index))
                if terminal:
                    items.append(self._replacement)
                elif below:
                    items.append(self._walk(item, below))
                else:
                    items.append(self._plain(item))
            return items
        return self._plain(value)

    @overload
    def body(self, raw: bytes) -> bytes: ...
    @overload
    def body(self, raw: None) -> None: ...
    def body(self, raw: bytes | None) -> bytes | None:
        """A request or response body, redacted for a record (``None`` stays ``None``).

        * JSON (first non-blank character "{" or "[", and it parses): :meth:`json`, re-serialised
          compactly as UTF-8.
        * SSE (first non-blank text "data:", "event:", "id:", "retry:" or ":"): line by line, with the
          line terminators kept; a "data:" payload that parses as JSON gets :meth:`json` (re-serialised
          compactly), every other line gets patterns.
        * JSON that does not parse (cut at the size cap, or malformed): patterns, and configured
          ``body_fields`` are still replaced -- by path where the text's structure can be followed from
          its start, and by their last key wherever ``"key": "value"`` or ``"key": scalar`` appears --
          so a truncated body never leaks a configured field.
        * other UTF-8 text: patterns (also where a backslash escape such as "\\n" is glued to a match).
        * not UTF-8 (binary): returned unchanged -- an ASCII secret inside, e.g. a text field of a
          multipart upload, is not redacted.

        With no pattern and no body field configured the body is returned unchanged.
        """
        if raw is None:
            return None
        if not self._active:
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        result = self.body_text(text)
        return raw if result == text else result.encode("utf-8")

    def body_text(self, text: str) -> str:
        """:meth:`body` for a body already decoded from UTF-8 (the text itself when nothing matched)."""
        if not self._active:
            return text
        if self._tree is None and "\\u" not in text:
            # No body fields: a pattern pass over the text as it is catches everything a parse
            # would (only a \u-escaped secret needs the decoding path), costs a fraction of it on
            # every record, and keeps the body byte for byte when nothing matched.
            return self._text_escapes(text) if self._may_match(text) else text
        lead = _LEADING.match(text)
        start = lead.end() if lead is not None else 0
        first = text[start : start + 1]
        if first == "{" or first == "[":
            return self._json_text(text[start:] if start else text)
        if text.startswith(_SSE_PREFIXES, start):
            return self._sse(text)
        return self._text_escapes(text)

    def _json_text(self, text: str) -> str:
        """JSON text redacted: parsed and re-serialised (the text itself when nothing changed), or
        scanned as text when it does not parse."""
        try:
            parsed = _json.loads(text)
            redacted = self.json(parsed)
            return text if redacted == parsed else self._dump(redacted)
        except (ValueError, RecursionError):
            # ValueError: not JSON (truncated, malformed, an integer over the int-digits limit);
            # RecursionError: nested too deep for the parser, the walk or the encoder.
            return self._unparsed(text)

    @staticmethod
    def _dump(value: Any) -> str:
        dumped = _json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        try:
            dumped.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate from a "\ud800" escape cannot be written as UTF-8; \u-escaping keeps
            # the JSON valid and equivalent.
            dumped = _json.dumps(value, separators=(",", ":"))
        return dumped

    def _unparsed(self, text: str) -> str:
        """JSON-looking text that does not parse: body fields replaced textually, then patterns."""
        text = self._scan(text)
        if self._field_text is not None:
            text = self._field_text.sub(self._field_text_replacement, text)
        # Not _text_escapes(): _scan() already decoded every string holding an escape, and valid JSON
        # has no escapes outside strings.
        return self.text(text)

    def _field_text_replacement(self, m: re.Match[str]) -> str:
        return m.group(1) + self._replacement_json

    def _scan(self, text: str) -> str:
        """Redact JSON text that may be cut short or malformed, token by token.

        A tolerant tokenizer follows the nesting from the start of the text: a value at a body-field
        path is replaced whole (a container up to its closing bracket, or to the end of the text when
        cut). A string holding escapes is decoded and, when a pattern matches the decoded text,
        re-encoded redacted -- a pass over the raw text misses an escaped secret ("\\u0073k-...") and
        one right after an escape such as "\\n", which hides the word boundary patterns start with.
        """
        tree = self._tree
        escapes = self._pattern is not None and "\\" in text
        if tree is None and not escapes:
            return text
        spans: list[tuple[int, int, str]] = []
        stack: list[_Frame] = []
        root: _Nodes = (tree,) if tree is not None else _NO_NODES
        skip_depth = 0  # > 0 while inside a container that is replaced or holds no configured path
        skip_start = -1  # where the replaced container began; -1 when skipping without replacing
        for m in _JSON_TOKEN.finditer(text):
            token = m.group()
            c = token[0]
            if c == '"' and escapes and "\\" in token and not (skip_depth and skip_start >= 0):
                # Tentatively; a string that turns out to be a replaced field value drops it below.
                redacted = self._escaped_string(token)
                if redacted is not None:
                    spans.append((m.start(), m.end(), redacted))
            if skip_depth:
                if c == "{" or c == "[":
                    skip_depth += 1
                elif c == "}" or c == "]":
                    skip_depth -= 1
                    if not skip_depth and skip_start >= 0:
                        spans.append((skip_start, m.end(), self._replacement_json))
                continue
            if c == "}" or c == "]":
                if stack:
                    stack.pop()
                continue
            if not stack:
                if c == "{" or c == "[":  # a root value (NDJSON has several)
                    if root:
                        stack.append(_Frame(c == "{", root))
                    else:
                        skip_depth, skip_start = 1, -1
                continue
            top = stack[-1]
            if c == ",":
                if top.is_object:
                    top.expect_key = True
                else:
                    top.index += 1
                continue
            if c == ":":
                top.expect_key = False
                continue
            if top.is_object and top.expect_key:
                top.key = _json_key(token)
                top.expect_key = False
                continue
            terminal, below = _step(top.nodes, top.key if top.is_object else str(top.index))
            if c == "{" or c == "[":
                if terminal:
                    skip_depth, skip_start = 1, m.start()
                elif below:
                    stack.append(_Frame(c == "{", below))
                else:
                    skip_depth, skip_start = 1, -1
            elif terminal:
                if spans and spans[-1][0] == m.start():
                    spans.pop()  # the escaped-string redaction of this very token
                spans.append((m.start(), m.end(), self._replacement_json))
        if skip_depth and skip_start >= 0:
            spans.append((skip_start, len(text), self._replacement_json))
        if not spans:
            return text
        pieces: list[str] = []
        pos = 0
        for begin, end, replacement in spans:
            pieces.append(text[pos:begin])
            pieces.append(replacement)
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces)

    def _escaped_string(self, token: str) -> str | None:
        """A JSON string token (maybe cut before its closing quote) re-encoded with patterns redacted
        in its decoded text, or None when no pattern matches there."""
        pattern = self._pattern
        if pattern is None:
            return None
        closed = len(token) >= 2 and token.endswith('"') and not _odd_backslashes_before_end(token)
        decoded: str | None = None
        if closed:
            try:
                loaded = _json.loads(token)
            except ValueError:
                loaded = None
            if isinstance(loaded, str):
                decoded = loaded
        if decoded is None:
            decoded = _JSON_ESCAPE.sub(_unescape, token[1:-1] if closed else token[1:])
        if pattern.search(decoded) is None:
            return None
        # ASCII-only: a lone surrogate from a \ud800 escape stays escaped, so the body stays UTF-8.
        encoded = _json.dumps(self.text(decoded))
        return encoded if closed else encoded[:-1]

    def _sse(self, text: str) -> str:
        parts = _SSE_LINES.split(text)
        # Even indices are lines, odd ones their terminators (kept as received).
        for i in range(0, len(parts), 2):
            line = parts[i]
            if line.startswith("data:"):
                # The field value starts after "data:" and one optional space (the SSE spec).
                cut = 6 if line.startswith("data: ") else 5
                payload = line[cut:]
                lead = _LEADING.match(payload)
                first = payload[lead.end() : lead.end() + 1] if lead is not None else ""
                if first == "{" or first == "[":
                    parts[i] = line[:cut] + self._json_text(payload)
                else:
                    # Possibly the continuation of a JSON payload split over several data lines.
                    parts[i] = self._unparsed(line)
            elif line:
                parts[i] = self._text_escapes(line)
        return "".join(parts)


_META = frozenset(".^$*+?{}[]\\|()")
_LEAD = re.compile(r"(?:\\b|\(\?[aiLmsux]*:|\(\?[aiLmsux]+\))+")


_HEADER_CACHE_SIZE = 4096
# The non-ASCII characters a case-insensitive pattern matches as an ASCII letter ("(?i)sk-"
# matches "\u017fk-"), while str.lower() does not give that letter alone: folded before the
# literal pre-scan, so it does not wave through text such a pattern would match.
_CASE_FOLDS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_CLASS = re.compile(r"\[([A-Za-z0-9_-]{1,8})\]")  # a small class of plain characters, e.g. [pousr]


def _required_literals(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    """Lowercase literals such that every match of every pattern contains one of them (each
    pattern's leading literal text, small character classes expanded: ``gh[pousr]_`` gives
    ``ghp_``, ``gho_``, ...), or None when some pattern has no literal of 3+ characters we can be
    sure of (then every text is scanned)."""
    literals: list[str] = []
    for pattern in patterns:
        if not pattern:
            continue
        if "|" in pattern:  # an alternation: a leading literal is not required by every branch
            return None
        lead = _LEAD.match(pattern)
        rest = pattern[lead.end() :] if lead else pattern
        prefixes = [""]
        i = 0
        while i < len(rest):
            char = rest[i]
            cls = _CLASS.match(rest, i) if char == "[" else None
            if cls is not None:
                options = sorted(set(cls.group(1).replace("-", "") if "-" in cls.group(1)[1:-1] else cls.group(1)))
                if "-" in cls.group(1)[1:-1] or len(prefixes) * len(options) > 32:
                    break  # a range, or too many combinations: stop the literal here
                following = rest[cls.end() : cls.end() + 1]
                if following and following in "*?{":
                    break
                prefixes = [p + o for p in prefixes for o in options]
                i = cls.end()
                continue
            if char in _META:
                if char in "*?{":  # the quantifier may remove the previous character
                    prefixes = [p[:-1] for p in prefixes]
                break
            following = rest[i + 1 : i + 2]
            if following and following in "*?{":
                break
            prefixes = [p + char for p in prefixes]
            i += 1
        if min(len(p) for p in prefixes) < 3:
            return None
        literals.extend(p.lower() for p in prefixes)
    return tuple(dict.fromkeys(literals)) if literals else None


def _group_literals(
    literals: tuple[str, ...] | None,
) -> tuple[tuple[str, ...] | None, tuple[re.Pattern[str], ...]]:
    """Literals that differ in one character only (``gho_``, ``ghp_``, ... from ``gh[pousr]_``)
    become one regex with a literal prefix (``gh[oprsu]_``), which the regex engine finds in one
    pass: five substring scans of a body cost ~2.5x that. Returns (the other literals, the groups)."""
    if literals is None:
        return None, ()
    remaining = list(literals)
    groups: list[re.Pattern[str]] = []
    while True:
        buckets: dict[tuple[str, str, int], list[str]] = {}
        for literal in remaining:
            for i in range(2, len(literal)):  # a prefix of 2+ characters keeps the engine's fast search
                buckets.setdefault((literal[:i], literal[i + 1 :], i), []).append(literal)
        best = max(buckets.items(), key=lambda item: len(item[1]), default=None)
        if best is None or len(best[1]) < 3:
            break
        (prefix, suffix, i), members = best
        chars = "".join(sorted({m[i] for m in members}))
        groups.append(re.compile(f"{re.escape(prefix)}[{re.escape(chars)}]{re.escape(suffix)}"))
        remaining = [literal for literal in remaining if literal not in members]
    return tuple(remaining), tuple(groups)


class RedactingFilter(logging.Filter):
    """Attach to handlers so every log line (message, args, exception text) is redacted.

    The record is formatted once (``getMessage()``) and the result redacted with
    :meth:`Redactor.message`. When that changes anything, ``record.msg`` becomes the redacted text and
    ``record.args`` None; when nothing needed redacting the message and args are left as they were,
    so formatters that read ``record.args`` (uvicorn's access formatter) keep working. Exception and
    stack text are formatted, redacted into ``record.exc_text`` / ``record.stack_info``, and
    ``record.exc_info`` is cleared so no later formatter renders the unredacted exception. Never
    drops a record.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor.message
        try:
            message = record.getMessage()
        except Exception:
            # Bad format arguments: logging would report them in the handler, which prints the raw
            # msg and args -- show a redacted rendering of both instead.
            try:
                message = f"{record.msg!s} (args: {record.args!r})"
            except Exception:
                message = "<unprintable log message>"
            record.msg, record.args = redact(message), None
        else:
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _attach(filterer: logging.Filterer, new: RedactingFilter) -> None:
    # One list assignment (not remove()/addFilter()) so a thread logging meanwhile never sees the
    # filterer without a redacting filter, nor with two.
    kept = [f for f in filterer.filters if not isinstance(f, RedactingFilter)]
    filterer.filters = [*kept, new]


def install_log_redaction(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Redact every log record that reaches an existing handler, whichever library emitted it.

    Adds a :class:`RedactingFilter` to every handler of the root logger, of ``logger`` (default: the
    "haproxy_ai" logger) and of every other logger already created (e.g. uvicorn's, which may not
    propagate), to ``logging.lastResort``, and to ``logger`` itself. Calling it again replaces the
    previous RedactingFilter everywhere instead of adding a second one.

    Filters live on handlers because a logger's own filters only see records logged on that very
    logger, not those propagated from its children. Consequently a handler added *after* this call
    is not covered: call this again after configuring logging, or add a RedactingFilter to it.
    """
    new = RedactingFilter(redactor)
    target = logger if logger is not None else logging.getLogger("haproxy_ai")
    loggers: list[logging.Logger] = [logging.getLogger(), target]
    loggers.extend(x for x in list(logging.Logger.manager.loggerDict.values()) if isinstance(x, logging.Logger))
    handlers: dict[int, logging.Handler] = {}
    for each in loggers:
        for handler in list(each.handlers):
            handlers[id(handler)] = handler
    if logging.lastResort is not None:
        handlers[id(logging.lastResort)] = logging.lastResort
    for handler in handlers.values():
        _attach(handler, new)
    _attach(target, new)
