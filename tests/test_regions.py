"""Region and SFMC-locale normalisation of the reminder types (contract §6), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from export_service.exporters.regions import Regions
from export_service.settings import Settings

DEFAULTS = Regions.from_settings(Settings())


@pytest.mark.parametrize(
    ("country", "region"),
    [
        ("US", "NA"),
        ("CA", "NA"),
        ("MX", "NA"),
        ("GB", "UK"),
        ("IE", "UK"),
        ("us", "NA"),
        ("gb", "UK"),
        (" ie ", "UK"),
        ("DE", "NA"),  # any other country: defaultRegion
        ("AU", "NA"),
        ("", "NA"),
        (None, "NA"),
        (44, "NA"),
        (["GB"], "NA"),
    ],
)
def test_region_by_country(country: Any, region: str) -> None:
    assert DEFAULTS.region(country) == region


@pytest.mark.parametrize(
    ("locale", "country", "expected"),
    [
        # lower-case ll-cc after replacing `_` by `-`
        ("en-US", "US", "en-us"),
        ("en_US", "US", "en-us"),
        ("en_us", "US", "en-us"),
        ("EN_US", "CA", "en-us"),  # a well-formed locale wins over the country
        ("fr-CA", "CA", "fr-ca"),
        ("fr_ca", "US", "fr-ca"),
        ("es-MX", "MX", "es-mx"),
        ("de-DE", "DE", "de-de"),
        (" en-GB ", "GB", "en-gb"),
        # aliases
        ("EN-uk", "GB", "en-gb"),
        ("en-uk", "US", "en-gb"),
        ("en-mx", "MX", "en-us"),
        ("en_MX", "US", "en-us"),
        ("en-ie", "IE", "en-gb"),
        ("en_IE", "IE", "en-gb"),
        ("en-nz", "AU", "en-au"),
        # missing or malformed: the country's default
        (None, "US", "en-us"),
        (None, "CA", "en-ca"),
        (None, "MX", "es-mx"),
        (None, "GB", "en-gb"),
        (None, "IE", "en-gb"),
        ("", "ca", "en-ca"),
        ("xx", "MX", "es-mx"),
        ("english", "GB", "en-gb"),
        ("12-34", "IE", "en-gb"),
        ("en", "CA", "en-ca"),
        ("en-usa", "MX", "es-mx"),
        ("e1-us", "US", "en-us"),
        ("en--us", "CA", "en-ca"),
        (42, "mx", "es-mx"),
        (["en-gb"], "CA", "en-ca"),
        # ... and else en-us
        (None, "DE", "en-us"),
        ("garbage", "FR", "en-us"),
        (None, None, "en-us"),
        ("", "", "en-us"),
        ("xx", 7, "en-us"),
    ],
)
def test_sfmc_locale(locale: Any, country: Any, expected: str) -> None:
    assert DEFAULTS.locale(locale, country) == expected


@pytest.mark.parametrize(
    ("country", "locale", "partition"),
    [
        ("US", "en_US", ("NA", "en-us")),
        ("gb", "EN-uk", ("UK", "en-gb")),
        ("MX", "en-mx", ("NA", "en-us")),
        ("IE", None, ("UK", "en-gb")),
        ("US", "en-GB", ("NA", "en-gb")),  # region follows the country, locale the entry
        (None, "en-GB", ("NA", "en-gb")),
        ("DE", "de_de", ("NA", "de-de")),
        (None, None, ("NA", "en-us")),
    ],
)
def test_partition(country: Any, locale: Any, partition: tuple[str, str]) -> None:
    assert DEFAULTS.partition(country, locale) == partition


def test_tables_are_configurable_and_normalised() -> None:
    regions = Regions.from_settings(
        Settings(
            default_region="EU",
            region_by_country={"us": "NA", "DE": "DACH", "AT": "DACH"},
            locale_aliases={"DE_AT": "de_DE", "en-mx": "es-mx"},
            country_locales={"at": "DE-at", "us": "en_US"},
            fallback_locale="EN-GB",
        )
    )
    assert regions.region("US") == "NA"
    assert regions.region("at") == "DACH"
    assert regions.region("GB") == "EU"  # no longer in the table: the default region
    assert regions.locale("de-AT", "AT") == "de-de"
    assert regions.locale("en-mx", "MX") == "es-mx"
    assert regions.locale("en-uk", "GB") == "en-uk"  # alias no longer configured
    assert regions.locale(None, "AT") == "de-at"
    assert regions.locale(None, "MX") == "en-gb"  # not in the table: the fallback
    assert regions.partition("de", "bad") == ("DACH", "en-gb")


def test_tables_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_SERVICE_REGION_BY_COUNTRY", '{"FR": "EU"}')
    monkeypatch.setenv("EXPORT_SERVICE_LOCALE_ALIASES", '{"fr-be": "fr-fr"}')
    monkeypatch.setenv("EXPORT_SERVICE_DEFAULT_REGION", "ROW")
    regions = Regions.from_settings(Settings())
    assert regions.partition("fr", "fr_BE") == ("EU", "fr-fr")
    assert regions.partition("US", "en-us") == ("ROW", "en-us")
