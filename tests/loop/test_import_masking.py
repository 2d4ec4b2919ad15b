"""Masking of structured personal data, and leaving ordinary numbers alone."""

from __future__ import annotations

import pytest

from loop.importing import mask_personal_data
from loop.importing.masking import iban_valid, luhn_valid


@pytest.mark.parametrize("text, expected", [
    ("write to alice.nguyen+trips@mail.example.co.uk today", "write to [email] today"),
    ("(bob@example.net)", "([email])"),
    ("call +44 7700 900123 now", "call [phone] now"),
    ("call +1 (415) 555-0132", "call [phone]"),
    ("mobile: +491701234567.", "mobile: [phone]."),
    ("ring 07700 900123 or 020 7946 0958", "ring [phone] or [phone]"),
    ("tel. 06 12 34 56 78", "tel. [phone]"),
    ("office (415) 555-0132, cell 415-555-0199", "office [phone], cell [phone]"),
    ("card 4111 1111 1111 1111 exp 12/27", "card [card] exp 12/27"),
    ("card 4111-1111-1111-1111", "card [card]"),
    ("amex 3782 822463 10005", "amex [card]"),
    ("num 5500005555555559", "num [card]"),
    ("IBAN DE89 3704 0044 0532 0130 00 THANKS", "IBAN [iban] THANKS"),
    ("to GB82WEST12345698765432.", "to [iban]."),
])
def test_personal_data_is_masked(text: str, expected: str):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", [
    "see you at 10:30 or 14.45",
    "on 2023-12-31, 31.12.2023 and 12/31/2023",
    "01.02.2023 1234 steps",
    "it cost $1,299.99 or € 1 250 000",
    "order #12345678 shipped",
    "pi is 3.1415926535897932",
    "4111 1111 1111 1112 fails Luhn",
    "DE89 3704 0044 0532 0130 01 fails mod 97",
    "ISBN 978-3-16-148410-0",
    "version 10.0.19045.3803",
    "we were 1 2 3 4 5 6 7 8 9 10 11 12 13 14 people",
    "a year has 31536000 seconds",
    "room 101, floor 7, 2024 visitors",
    "ping me @alice or #general",
    "",
])
def test_ordinary_text_is_left_alone(text: str):
    assert mask_personal_data(text) == text


def test_checks():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")


def test_masking_is_idempotent():
    text = "mail a@b.example, call +44 7700 900123, pay DE89370400440532013000"
    once = mask_personal_data(text)
    assert mask_personal_data(once) == once == "mail [email], call [phone], pay [iban]"
