"""Redaction: secrets and personal data out of shared transcripts, exported traces and logs.

Secrets are found with detect-secrets' detectors: its vendor token patterns, its keyword
assignment patterns (`password = "..."`), its entropy measure and its false-positive
heuristics. They are called directly, not through its scanner, whose settings are
process-wide mutable state. Patterns it lacks are added here: Cadre's own `cadre_` keys,
`sk-` keys without OpenAI's marker, bearer tokens, the URL passwords it misses and whole PEM
blocks (it only flags the BEGIN line). Phone numbers are found with phonenumbers; emails and
Luhn-checked card numbers with small patterns.

Every finding becomes a typed placeholder such as `[REDACTED:aws_key]`, so a reader still
sees what kind of value was there.
"""

from __future__ import annotations

import bisect
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from re import Match, Pattern
from typing import Any, Final

import phonenumbers
from detect_secrets.filters import heuristic
from detect_secrets.plugins import keyword
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

# How Cadre's API keys begin (`app.keys` makes them): a key in any text is redacted.
KEY_PREFIX = "cadre_"


_Span = tuple[int, int, str]

# A merged finding takes the label of its most specific part: a JWT inside a bearer header is
# a `jwt`, a card number the phone matcher also saw is a `card`.
_RANK: Final = {"secret": 0, "email": 1, "phone": 1, "card": 2, "password": 3, "private_key": 5}
_NAMED_RANK: Final = 4

# detect-secrets' vendor detectors. Left out, each for a reason a test or a measurement showed:
# - CloudantDetector, IbmCloudIamDetector, IbmCosHmacDetector, SoftlayerDetector: their
#   `key *( +) *value` assignment patterns backtrack cubically on a keyword followed by a long
#   run of spaces (20 kB of them never finish), and transcripts carry fetched web pages. Their
#   keys are caught here as keyword assignments or random-looking strings.
# - OpenAIDetector: quadratic on runs of `sk-`, and it requires the `T3BlbkFJ` marker that
#   many keys lack; the `sk-` pattern below covers its keys.
# - ArtifactoryDetector: `AP` + a hex digit + 8 alphanumerics is also an invoice number.
# - IPPublicDetector: addresses are not secrets, and logs need them.
_VENDOR_DETECTORS: Final[tuple[tuple[RegexBasedDetector, str], ...]] = (
    (AWSKeyDetector(), "aws_key"),
    (AzureStorageKeyDetector(), "azure_key"),
    (BasicAuthDetector(), "password"),
    (DiscordBotTokenDetector(), "discord_token"),
    (GitHubTokenDetector(), "github_token"),
    (GitLabTokenDetector(), "gitlab_token"),
    (MailchimpDetector(), "mailchimp_key"),
    (PypiTokenDetector(), "pypi_token"),
    (SendGridDetector(), "sendgrid_key"),
    (SlackDetector(), "slack_token"),
    (SquareOAuthDetector(), "square_key"),
    (StripeDetector(), "stripe_key"),
    (TelegramBotTokenDetector(), "telegram_token"),
    (TwilioKeyDetector(), "twilio_key"),
)
# JwtTokenDetector's pattern backtracks over the rest of the run after every `eyJ` (quadratic
# on a base64 blob of JSON) and stops before the signature. This one starts only where a token
# starts; the detector still decides, by checking that header and payload decode to JSON.
_JWT: Final = re.compile(
    r"(?<![A-Za-z0-9_=-])eyJ[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+(?:\.[A-Za-z0-9_=+/-]*)?"
)
_JWT_DETECTOR: Final = JwtTokenDetector()
# NpmDetector's `//.+/:_authToken=` rescans the rest of the line from every `//`: run only
# where it can match, or a long single-line transcript full of URLs takes quadratic time.
_NPM_MARKER: Final = ":_authToken="

# Secrets detect-secrets has no pattern for, as (pattern, label, random-looking values only).
# Group 1, if any, is the part to redact.
_OWN_PATTERNS: Final[tuple[tuple[Pattern[str], str, bool], ...]] = (
    (re.compile(rf"(?<![\w-]){re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{32,}}"), "cadre_key", True),
    # OpenAI's detector wants the `T3BlbkFJ` marker; project keys and compatible providers'
    # `sk-...` keys often lack it.
    (re.compile(r"(?<![\w-])sk-[A-Za-z0-9_-]{20,}"), "openai_key", True),
    (re.compile(r"(?<!\w)[rs]k_test_[0-9A-Za-z]{16,}"), "stripe_key", False),
    (re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"), "google_api_key", False),
    # BasicAuthDetector wants a non-empty user and no sub-delimiters in the password, so
    # `redis://:pa$$w0rd@host` passes it.
    (re.compile(r"://[^\s:/?#@\[\]]*:([^\s/?#@]+)@"), "password", False),
    (re.compile(r"(?<![\w-])Bearer\s+([A-Za-z0-9._~+/-]{16,}=*)"), "secret", True),
    # A header value, not `authorization = request.headers.get(...)`.
    (re.compile(r"(?i)\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|bot|digest)\s+)?"
                r"([A-Za-z0-9._~+/=-]{8,})(?![\w.(\[])"), "secret", True),
    # `access_token=...`, `"refreshToken": "..."`; detect-secrets' keyword list has no `token`.
    (re.compile(r"(?i)token[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9._~+/=-]{16,})"), "secret", True),
)

# detect-secrets' private key markers (plain strings), plus the PKCS#8 encrypted one it lacks.
_PEM_HEADER: Final = re.compile(
    "|".join([*(p.pattern for p in PrivateKeyDetector().denylist), "BEGIN ENCRYPTED PRIVATE KEY"])
)
_PEM_END: Final = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|Private-MAC: *[0-9a-fA-F]+")
_PEM_MAX: Final = 20_000
# A key without its END line (a truncated paste) is redacted up to the end of its paragraph,
# or of the quoted string holding it.
_PEM_CUT: Final = re.compile(r"\n[ \t]*\n|\\n\\n|(?<!\\)[\"']|\Z")

# Keyword assignments, as (detect-secrets pattern, quote group, value group). A keyword hit
# anchors each pattern, over at most _KEYWORD_WINDOW characters, so that text full of the
# word "password" stays linear.
_KEYWORD_HIT: Final = re.compile("|".join(keyword.DENYLIST), re.IGNORECASE)
_KEYWORD_ASSIGNMENTS: Final[tuple[tuple[Pattern[str], int, int], ...]] = (
    (keyword.FOLLOWED_BY_EQUAL_SIGNS_REGEX, 4, 5),
    (keyword.FOLLOWED_BY_COLON_EQUAL_SIGNS_REGEX, 3, 4),
    (keyword.FOLLOWED_BY_COLON_REGEX, 3, 4),
    (keyword.FOLLOWED_BY_ARROW_FUNCTION_SIGN_QUOTES_REQUIRED_REGEX, 3, 4),
    (keyword.FOLLOWED_BY_QUOTES_AND_SEMICOLON_REGEX, 2, 3),
)
_KEYWORD_WINDOW: Final = 300
_UNQUOTED_END: Final = re.compile(r"[\s&,;]")
# Unquoted values that are words or names, not secrets: "Enter your password: it must ...",
# `password: SecretStr`, `Client(password=password)`, `secret = settings.secret_key`.
_NAME: Final = re.compile(r"[A-Za-z_]+(?:\.[A-Za-z_]+)*")
_CAMEL_CASE: Final = re.compile(r"(?:[A-Z][a-z]+)+")
_LITERALS: Final = frozenset({"none", "null", "nil", "true", "false", "undefined"})
_CALL: Final = re.compile(r"[\w.-]+[\[(]")

_ENTROPY: Final = Base64HighEntropyString()
# `=` only as base64 padding, so `NAME=value` is two tokens and the name survives.
_UNQUOTED_TOKEN: Final = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}={0,2}")
_ID_KEY_BEFORE: Final = re.compile(r"(?i)(?:\b|_)ids?[\"']?\s*[:=]\s*[\"']?\Z")

_EMAIL: Final = re.compile(
    r"(?<![\w.%+-])([\w.%+-]+)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])"
)
_URL_USERINFO_BEFORE: Final = re.compile(r"://[^\s/?#@]*:\Z")
_NOT_PERSONAL_MAILBOXES: Final = frozenset({"git"})  # git@github.com:org/repo.git

_CARD: Final = re.compile(r"(?<![\w.+-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\w-]|[.,]\d)")

# Phone-shaped text: `+` and a country code, or a North American number (the default
# region's). Only these reach the slow, pure-Python matcher, which validates them; numbers
# inside identifiers (INV-2024-000123) and runs of table figures never do.
_PHONE_CANDIDATE: Final = re.compile(
    r"(?<![\w+#/.-])(?:\+\d[\d ().-]{5,20}\d|(?:1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4})"
    r"(?![\w-])"
)
_PHONE_REGION: Final = "US"

# Every region's metadata now, not lazily on the first number from that country: a lazy load
# is an import, so file I/O, in the middle of an event-loop turn.
phonenumbers.PhoneMetadata.load_all()


def redact(text: str) -> str:
    """`text` with each secret and piece of personal data replaced by `[REDACTED:<kind>]`.

    Kinds include `aws_key`, `github_token`, `openai_key`, `slack_token`, `jwt`, `cadre_key`,
    `private_key` (a whole PEM block), `password` (keyword assignments and URL passwords, the
    URL's scheme and host kept), `secret` (generic tokens and high-entropy strings), `email`,
    `phone` and `card`. UUIDs, hex digests, dates, amounts and short numbers are kept.

    CPU only, no I/O; about a second per MB, so run a whole transcript in a thread.
    """
    return _redact(text, entropy=True)


def redact_json(value: Any) -> Any:
    """A copy of a JSON-like value with every string in it redacted, dict keys kept.

    The string value of a credential-named key (`password`, `client_secret`, `api_key`,
    `access_token`, `Authorization`, `Cookie`, ...) is replaced whole, whatever it looks like.
    Values of id keys (`id`, `tool_call_id`) skip the generic high-entropy rule, which would
    otherwise take random-looking ids and break the links between trace entries.
    """
    return _redact_value(value, None)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message, exception and stack text.

    Attach it to handlers rather than loggers: a logger's filters are skipped for records
    propagated from its children.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: left for the handler to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redact(text: str, *, entropy: bool) -> str:
    if not text:
        return text
    spans = [*_secrets(text, entropy=entropy), *_personal_data(text)]
    return _replace(text, spans) if spans else text


def _replace(text: str, spans: list[_Span]) -> str:
    spans.sort()
    out: list[str] = []
    done = 0
    start, end, label = spans[0]
    for s, e, lab in spans[1:]:
        if s < end:
            end = max(end, e)
            if _rank(lab) > _rank(label):
                label = lab
            continue
        out += (text[done:start], f"[REDACTED:{label}]")
        done = end
        start, end, label = s, e, lab
    out += (text[done:start], f"[REDACTED:{label}]", text[end:])
    return "".join(out)


def _rank(label: str) -> int:
    return _RANK.get(label, _NAMED_RANK)


def _secrets(text: str, *, entropy: bool) -> Iterator[_Span]:
    yield from _vendor_tokens(text)
    yield from _jwts(text)
    yield from _own_patterns(text)
    yield from _pem_blocks(text)
    yield from _keyword_assignments(text)
    if entropy:
        yield from _high_entropy(text)


def _vendor_tokens(text: str) -> Iterator[_Span]:
    for detector, label in _VENDOR_DETECTORS:
        for pattern in detector.denylist:
            for match in pattern.finditer(text):
                yield from _group_spans(match, label)
    if _NPM_MARKER in text:
        for pattern in NpmDetector().denylist:
            for match in pattern.finditer(text):
                yield from _group_spans(match, "npm_token")


def _group_spans(match: Match[str], label: str) -> Iterator[_Span]:
    """The groups detect-secrets reports as the secret (all non-empty ones), else the match."""
    groups = [i for i in range(1, (match.re.groups or 0) + 1) if match.group(i)] or [0]
    for i in groups:
        if not _is_placeholder(match.group(i)):
            yield match.start(i), match.end(i), label


def _is_placeholder(value: str) -> bool:
    """`{password}`, `<token>`, `${DB_PASSWORD}`, `$DB_PASSWORD`, `***`: no secret in it."""
    return (
        heuristic.is_templated_secret(value)
        or heuristic.is_prefixed_with_dollar_sign(value)
        or heuristic.is_not_alphanumeric_string(value)
    )


def _jwts(text: str) -> Iterator[_Span]:
    for match in _JWT.finditer(text):
        if _JWT_DETECTOR.is_formally_valid(match.group()):
            yield match.start(), match.end(), "jwt"


def _own_patterns(text: str) -> Iterator[_Span]:
    for pattern, label, random_only in _OWN_PATTERNS:
        group = 1 if pattern.groups else 0
        for match in pattern.finditer(text):
            value = match.group(group)
            if _is_placeholder(value) or (random_only and not _looks_random(value)):
                continue
            yield match.start(group), match.end(group), label


def _looks_random(value: str) -> bool:
    """Not a page of digits, nor a name (`TOKEN_BLOCK_BEGIN`, `AttributeEventToken`,
    `placeholder_for_your_token`). A 43-character random token has a digit but for a chance
    of 1e-3, and an upper-case letter or a digit but for 1e-15."""
    if not any(c.isalpha() for c in value):
        return False
    if _NAME.fullmatch(value):
        return not ("_" in value or "." in value or _CAMEL_CASE.fullmatch(value)
                    or value.islower() or value.isupper())
    return True


def _pem_blocks(text: str) -> Iterator[_Span]:
    ends: list[Match[str]] | None = None
    covered = 0
    for match in _PEM_HEADER.finditer(text):
        if match.start() < covered:
            continue  # a header inside the block before it: each block is searched once
        if ends is None:
            ends = list(_PEM_END.finditer(text))
        start = match.start()
        while start > 0 and text[start - 1] == "-" and match.start() - start < 5:
            start -= 1
        i = bisect.bisect_left(ends, match.end(), key=Match.start)
        if i < len(ends) and ends[i].start() - match.end() <= _PEM_MAX:
            end = ends[i].end()
        else:
            cut = _PEM_CUT.search(text, match.end())
            end = cut.start() if cut else len(text)
        covered = end
        yield start, end, "private_key"


def _keyword_assignments(text: str) -> Iterator[_Span]:
    for hit in _KEYWORD_HIT.finditer(text):
        line_end = text.find("\n", hit.end(), hit.end() + _KEYWORD_WINDOW)
        window_end = line_end if line_end >= 0 else min(len(text), hit.end() + _KEYWORD_WINDOW)
        for pattern, quote_group, value_group in _KEYWORD_ASSIGNMENTS:
            match = pattern.match(text, hit.start(), window_end)
            if match is None:
                continue
            span = _keyword_value(text, match, quoted=bool(match.group(quote_group)),
                                  value_group=value_group)
            if span is not None:
                yield span
            break


def _keyword_value(text: str, match: Match[str], *, quoted: bool, value_group: int) -> _Span | None:
    start, end = match.span(value_group)
    value = match.group(value_group)
    if not quoted:
        cut = _UNQUOTED_END.search(value)
        value = value[: cut.start()] if cut else value
        value = value.rstrip(")]}")  # `f(password=pw)`, `{"secret": secret}`
        end = start + len(value)
        if _CALL.match(value):
            return None  # `password = os.environ["DB_PASSWORD"]`
        if _NAME.fullmatch(value) and (
            "_" in value or "." in value or value.lower() in _LITERALS
            or _KEYWORD_HIT.search(value)
            or (start > 0 and text[start - 1].isspace())
        ):
            return None
    if not value or value.startswith("[REDACTED:") or _is_placeholder(value):
        return None
    name = match.group(1).lower()
    label = "password" if any(k in name for k in ("pass", "pwd", "contrase")) else "secret"
    return start, end, label


def _high_entropy(text: str) -> Iterator[_Span]:
    """detect-secrets' entropy rule (limit 4.5 bits per character over the base64 alphabet),
    on quoted strings as it does and, for unquoted tokens, only on ones that mix upper case,
    lower case and digits, which keeps paths, identifiers and hex digests out."""
    for match in _ENTROPY.regex.finditer(text):
        if _is_random_secret(text, match.start(2), match.group(2)):
            yield match.start(2), match.end(2), "secret"
    for match in _UNQUOTED_TOKEN.finditer(text):
        token = match.group()
        if (
            any(c.isupper() for c in token)
            and any(c.islower() for c in token)
            and any(c.isdigit() for c in token)
            and _is_random_secret(text, match.start(), token)
        ):
            yield match.start(), match.end(), "secret"


def _is_random_secret(text: str, start: int, value: str) -> bool:
    return (
        _ENTROPY.calculate_shannon_entropy(value) > _ENTROPY.entropy_limit
        and not heuristic.is_potential_uuid(value)
        and not heuristic.is_sequential_string(value)
        and not _ID_KEY_BEFORE.search(text, max(0, start - 40), start)
    )


def _personal_data(text: str) -> Iterator[_Span]:
    for match in _EMAIL.finditer(text):
        if match.group(1).lower() in _NOT_PERSONAL_MAILBOXES:
            continue
        if _URL_USERINFO_BEFORE.search(text, max(0, match.start() - 256), match.start()):
            continue  # the password of `scheme://user:password@host.tld`, not a mailbox
        yield match.start(), match.end(), "email"
    for match in _CARD.finditer(text):
        if _luhn_ok([int(c) for c in match.group() if c.isdigit()]):
            yield match.start(), match.end(), "card"
    for candidate in _PHONE_CANDIDATE.finditer(text):
        # A character either side, a few after: the matcher looks there for a currency sign
        # before, or the `:MM` that makes `2032-01-02 03` a timestamp.
        offset = max(0, candidate.start() - 1)
        matcher = phonenumbers.PhoneNumberMatcher(
            text[offset : candidate.end() + 3], _PHONE_REGION,
            leniency=phonenumbers.Leniency.VALID, max_tries=sys.maxsize,
        )
        for found in matcher:
            if offset + found.end <= candidate.end():
                yield offset + found.start, offset + found.end, "phone"


def _luhn_ok(digits: list[int]) -> bool:
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


_SENSITIVE_KEY_ENDINGS: Final = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey", "secretkey",
    "accesskey", "authorization", "cookie", "credential", "credentials",
)
_ID_KEY: Final = re.compile(r"(?:^|[_-])(?:id|ID|Id)s?$|[a-z0-9](?:Id|ID)s?$")


def _redact_value(value: Any, key: str | None) -> Any:
    if isinstance(value, str):
        if key is not None and value:
            folded = re.sub(r"[^a-z0-9]", "", key.lower())
            if folded.endswith(_SENSITIVE_KEY_ENDINGS):
                return "[REDACTED:password]" if "pass" in folded else "[REDACTED:secret]"
        return _redact(value, entropy=key is None or not _ID_KEY.search(key))
    if isinstance(value, Mapping):
        return {k: _redact_value(v, k if isinstance(k, str) else None) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item, key) for item in value]
    return value
