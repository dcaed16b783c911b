"""Country → region and free-form locale → SFMC locale, for the reminder types (contract §6).

Entries carry whatever the entry form stored (`en-US`, `en_us`, `EN-uk`, `english`, nothing),
while SFMC wants one canonical `ll-cc` per file. Every table comes from the settings, so new
countries or aliases are configuration, not code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from export_service.settings import Settings

# What a usable locale looks like once lower-cased with `_` turned into `-`.
_LOCALE_SHAPE = re.compile(r"[a-z]{2}-[a-z]{2}")


def _locale_key(value: str) -> str:
    return value.strip().replace("_", "-").lower()


def _country_key(value: Any) -> str:
    return value.strip().upper() if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Regions:
    """The settings' region and locale tables, normalised once per export."""

    region_by_country: Mapping[str, str]
    default_region: str
    locale_aliases: Mapping[str, str]
    country_locales: Mapping[str, str]
    fallback_locale: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        # Configured keys and values are normalised like the data, so `EN_UK: en_GB` in a
        # settings file means what it says.
        return cls(
            region_by_country={_country_key(k): v for k, v in settings.region_by_country.items()},
            default_region=settings.default_region,
            locale_aliases={
                _locale_key(k): _locale_key(v) for k, v in settings.locale_aliases.items()
            },
            country_locales={
                _country_key(k): _locale_key(v) for k, v in settings.country_locales.items()
            },
            fallback_locale=_locale_key(settings.fallback_locale),
        )

    def region(self, country: Any) -> str:
        """`US` → `NA`, `gb` → `UK`; any other or missing country → the default region."""
        return self.region_by_country.get(_country_key(country), self.default_region)

    def locale(self, locale: Any, country: Any) -> str:
        """`en_US` → `en-us`, `EN-uk` → `en-gb`; missing or malformed → the country's default."""
        if isinstance(locale, str):
            candidate = _locale_key(locale)
            if _LOCALE_SHAPE.fullmatch(candidate):
                return self.locale_aliases.get(candidate, candidate)
        return self.country_locales.get(_country_key(country), self.fallback_locale)

    def partition(self, country: Any, locale: Any) -> tuple[str, str]:
        """(region, SFMC locale) of one entry: the file its reminder row goes to."""
        return self.region(country), self.locale(locale, country)
