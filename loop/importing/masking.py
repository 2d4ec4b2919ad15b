"""Masking structured personal data in imported text: e-mail addresses, phone numbers, card
numbers and IBANs become "[email]", "[phone]", "[card]", "[iban]".

Card numbers must pass the Luhn check and IBANs the mod-97 check, so ordinary long numbers stay.
Phone numbers are matched by shape (an international "+" number, a national number with a
leading 0, or a North American 3-3-4 number) and never when the digits read as a date, a time,
a price with thousands separators or a decimal. The masks are deterministic, so re-importing
masked data still finds the same duplicates.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

EMAIL = "[email]"
PHONE = "[phone]"
CARD = "[card]"
IBAN = "[iban]"

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])")
# IBANs are printed in groups of four, or without spaces; the country code is upper case.
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w])")
_CARD = re.compile(
    r"(?<![\d.,-])(?<![A-Z]{2}\d{2} )(?:\d{13,19}"  # not the digits of a mistyped IBAN
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5})(?![\d]|[.,]\d)")
_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d(?:[ .\-()/]{0,2}\d){6,14}(?![\d]|[.,]\d)")
_NATIONAL = re.compile(r"(?<![\w.,:/+-])\(?0\d{1,4}\)?(?:[ .\-/]?\d{2,4}){2,4}(?![\w]|[.,:]\d)")
_NORTH_AMERICAN = re.compile(r"(?<![\w.,:/+-])(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .\-])\d{3}[ .\-]\d{4}(?![\w]|[.,:]\d)")
_DATE_START = re.compile(r"^\(?\d{1,4}[./-]\d{1,2}[./-]\d{1,4}(?!\d)")


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _mask_iban(match: re.Match[str]) -> str:
    text = match.group(0)
    # Upper-case words after an IBAN can look like more groups: try the longest valid prefix.
    ends = [m.end() for m in re.finditer(r"[A-Z0-9]{1,4}", text)]
    for end in reversed(ends):
        if iban_valid(text[:end]):
            return IBAN + text[end:]
    return text


def _mask_card(match: re.Match[str]) -> str:
    text = match.group(0)
    return CARD if 13 <= len(_digits(text)) <= 19 and luhn_valid(text) else text


def _mask_international(match: re.Match[str]) -> str:
    text = match.group(0)
    return PHONE if 8 <= len(_digits(text)) <= 15 else text


def _mask_national(match: re.Match[str]) -> str:
    text = match.group(0)
    if _DATE_START.match(text) or not 9 <= len(_digits(text)) <= 12:
        return text
    return PHONE


def mask_personal_data(text: str) -> str:
    """`text` with e-mail addresses, IBANs, card numbers and phone numbers replaced by placeholders."""
    if not text:
        return text
    text = _EMAIL.sub(EMAIL, text)
    text = _IBAN.sub(_mask_iban, text)
    text = _CARD.sub(_mask_card, text)
    text = _INTERNATIONAL.sub(_mask_international, text)
    text = _NATIONAL.sub(_mask_national, text)
    text = _NORTH_AMERICAN.sub(PHONE, text)
    return text
