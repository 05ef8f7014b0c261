"""The built-in ``pii`` corpus: sentences carrying personal data, generated offline with Faker.

Each sentence fills one of :data:`TEMPLATES` (picked with the seeded generator) with Faker values:
names, e-mail addresses, phone numbers, postal addresses (on one line) and payment-card numbers are
personal data and recorded as :class:`PIISpan` (kind, character offsets, text); weekdays, amounts and
company names are filler. The same ``n``, ``seed`` and ``locale`` give the same sentences and spans
(one seeded ``Faker`` instance draws everything, templates included). The templates are English; the
locale decides the names, addresses and phone formats.

:class:`PIISpan` needs no optional package; Faker is imported only when a corpus is generated.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedleak.errors import ConfigError, DataError

KINDS = ("name", "email", "phone", "address", "card")  # the kinds of personal data recorded
FILLERS = ("weekday", "amount", "company")  # template fields that are not personal data
MAX_EXAMPLES = 1_000_000

TEMPLATES = (
    "Please call {name} at {phone} before {weekday}.",
    "My name is {name} and my e-mail is {email}.",
    "Send the invoice for {amount} to {name}, {address}.",
    "{name} paid {amount} with the card {card} on {weekday}.",
    "You can reach me at {email} or on {phone}.",
    "The parcel for {name} goes to {address}.",
    "Card number {card} was charged {amount} by {company}.",
    "Hi, this is {name} from {company}; my direct line is {phone}.",
    "Update my address to {address} and my phone to {phone}, thanks, {name}.",
    "Reminder: {name} ({email}) has a meeting on {weekday}.",
    "I moved to {address}, write to me at {email}.",
    "Refund {amount} to card {card}, account holder {name}.",
    "Emergency contact: {name}, {phone}.",
    "{company} shipped order 7 to {name} at {address}.",
    "Forward the report to {email} and copy {name}.",
    "My card {card} expires soon, please call me on {phone}.",
    "Patient {name}, born on a {weekday}, lives at {address}.",
    "Login alert for {email}: a payment of {amount} from card {card}.",
    "Dear {name}, your new number {phone} is active.",
    "Billing address: {address}; card on file: {card}; contact: {email}.",
)


@dataclass(frozen=True)
class PIISpan:
    """One piece of personal data in a text: ``text == texts[i][start:end]`` (character offsets)."""

    kind: str
    start: int
    end: int
    text: str


def _values(fake: Any) -> dict[str, Callable[[], str]]:
    """The Faker draw for every template field (addresses on one line)."""
    return {
        "name": fake.name,
        "email": fake.email,
        "phone": fake.phone_number,
        "address": lambda: ", ".join(line.strip() for line in fake.address().splitlines() if line.strip()),
        "card": fake.credit_card_number,
        "weekday": fake.day_of_week,
        "amount": lambda: f"{fake.pyint(1, 999)}.{fake.pyint(0, 99):02d} {fake.currency_code()}",
        "company": fake.company,
    }


def fill(template: str, values: dict[str, Callable[[], str]]) -> tuple[str, list[PIISpan]]:
    """``template`` with each field drawn from ``values``, and the spans of the personal-data fields."""
    parts: list[str] = []
    spans: list[PIISpan] = []
    at = 0
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        at += len(literal)
        if field is None:
            continue
        value = values[field]()
        if field in KINDS:
            spans.append(PIISpan(field, at, at + len(value), value))
        parts.append(value)
        at += len(value)
    return "".join(parts), spans


def generate(n: int, seed: int = 0, locale: str = "en_US") -> tuple[list[str], list[list[PIISpan]]]:
    """``n`` sentences and their PII spans, the same for the same ``(n, seed, locale)`` (see the module
    doc); the first ``m`` sentences of a larger ``n`` are the ``m`` sentences of ``n = m``."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_EXAMPLES:
        raise ConfigError(f"pii option n must be an integer from 1 to {MAX_EXAMPLES}, got {n!r}")
    try:
        import faker  # optional dependency (the text extra); 0.2 s to import, so only when generating
    except ImportError:
        raise DataError("the pii dataset needs Faker: pip install 'fedleak[text]'") from None
    if locale not in faker.config.AVAILABLE_LOCALES:
        raise ConfigError(f"unknown Faker locale {locale!r} (e.g. en_US, en_GB, de_DE, fr_FR)")
    fake = faker.Faker(locale)
    fake.seed_instance(seed)
    values = _values(fake)
    texts: list[str] = []
    spans: list[list[PIISpan]] = []
    for _ in range(n):
        text, found = fill(fake.random.choice(TEMPLATES), values)
        texts.append(text)
        spans.append(found)
    return texts, spans
