"""Deterministic, realistic source data for one campaign (contract §2).

The generator exists to exercise the exporters: besides plausible bulk data it deliberately
contains every awkward shape the real collections hold (free-form locales, lower-case or
missing country codes, missing opt-in keys, names that break CSV or look like spreadsheet
formulas, users with several entries, codes in every status, SMS waves in every status).

Everything is derived from ``SeedPlan`` alone, so two runs with the same plan produce the same
documents, and the output does not depend on ``batch_size``. Entries are produced in fixed-size
chunks, each with its own RNG seeded from ``(seed, chunk)``: that keeps memory flat for millions
of entries and lets the scoring, codes and SMS passes re-derive which user entered which market
(the cheap "skeleton") without keeping the entries around.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import math
import random
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from itertools import product
from typing import TYPE_CHECKING, Any, Final

from pymongo.errors import BulkWriteError

from export_service.sources import (
    CAMPAIGNS,
    CODES,
    ENTRIES,
    MARKETS,
    PROMOTERS,
    SCORING,
    SMS_WAVES,
    SOURCE_COLLECTIONS,
)

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["COLLECTIONS", "SeedPlan", "generate", "seed"]

Doc = dict[str, Any]

COLLECTIONS: Final = SOURCE_COLLECTIONS

# Fixed, independent of batch_size, so that the documents are identical whatever the caller's
# batching; small enough that one chunk of entry documents is a few megabytes.
_CHUNK: Final = 10_000

# Kind bytes inside the ObjectId-like ids, so ids of different collections never collide.
_K_MARKET, _K_PROMOTER, _K_ENTRY, _K_USER, _K_SCORING, _K_CODE, _K_WAVE = range(1, 8)

_MS_PER_DAY: Final = 86_400_000


class _Absent(Enum):
    """Marks a variant whose field is left out of the document entirely."""

    KEY = 0


_ABSENT: Final = _Absent.KEY


@dataclass(frozen=True)
class SeedPlan:
    """Knobs of one generated campaign; the defaults give a small but fully varied data set."""

    campaign_id: str = "demo-campaign"
    entries: int = 1_000
    markets: int = 6
    promoters: int = 4
    seed: int = 42
    preferences: int = 3
    sms_waves: int = 4
    wave_dates: int = 3
    # Share of entries whose scoring record is `selected`; each of them gets an ASSIGNED code.
    selected_ratio: float = 0.3
    # AVAILABLE/RESERVED codes per entry, on top of the assigned ones.
    spare_code_ratio: float = 0.12
    # A wave document holds its member list inline; capping it keeps it far below 16 MB.
    sms_wave_max_members: int = 50_000
    # Users are campaign-scoped by default. Give two plans the same namespace (and seed) to
    # get fans who entered both campaigns, e.g. for CCPA tests.
    user_namespace: str | None = None
    # Adds a promoter id that has no `promoters` document to the first market, to provoke
    # `PromotersNotFound`.
    dangling_promoter: bool = False
    start: datetime = field(default=datetime(2026, 9, 1, 16, 0))

    def __post_init__(self) -> None:
        if self.entries < 0:
            raise ValueError("entries must be >= 0")
        if self.markets < 1:
            raise ValueError("markets must be >= 1 (delete them afterwards to test NoMarketsFound)")
        if self.promoters < 0:
            raise ValueError("promoters must be >= 0")
        if not 0 <= self.preferences <= len(_PREFERENCES):
            raise ValueError(f"preferences must be between 0 and {len(_PREFERENCES)}")
        if self.sms_waves < 0 or self.wave_dates < 1:
            raise ValueError("sms_waves must be >= 0 and wave_dates >= 1")
        if not 0.0 <= self.selected_ratio <= 1.0 or self.spare_code_ratio < 0:
            raise ValueError("selected_ratio must be in [0, 1] and spare_code_ratio >= 0")
        if self.sms_wave_max_members < 0:
            raise ValueError("sms_wave_max_members must be >= 0")
        if self.start.tzinfo is not None:
            raise ValueError("start must be a naive UTC datetime, as pymongo returns them")


# --------------------------------------------------------------------------------------------
# Static pools. Tricky values carry low weights so that bulk data stays plausible; every value
# is nevertheless forced to appear in every chunk (see `_cover`).

_ARTISTS: Final = (
    "Beyoncé",
    "Sigur Rós",
    "Mötley Crüe",
    "The Weeknd",
    "Bad Bunny",
    "Florence + the Machine",
    "Earth, Wind & Fire",
    'Weird Al "Yankovic"',
)

# (city, state, country); the order cycles through the five countries so that the default six
# markets span all of them.
_CITIES: Final = (
    ("New York", "NY", "US"),
    ("Toronto", "ON", "CA"),
    ("Ciudad de México", "CDMX", "MX"),
    ("London", "ENG", "GB"),
    ("Dublin", "D", "IE"),
    ("Los Angeles", "CA", "US"),
    ("Montréal", "QC", "CA"),
    ("Guadalajara", "JAL", "MX"),
    ("Manchester", "ENG", "GB"),
    ("Cork", "CO", "IE"),
    ("Chicago", "IL", "US"),
    ("Vancouver", "BC", "CA"),
    ("Monterrey", "NL", "MX"),
    ("Glasgow", "SCT", "GB"),
    ("Galway", "G", "IE"),
)

_PROMOTER_NAMES: Final = (
    "Live Nation",
    "AEG Presents",
    "Ocesa",
    "MCD Productions",
    "SJM Concerts",
    "Goldenvoice",
    "Evenko",
    "C3 Presents",
)


def _table(weights: Sequence[int]) -> tuple[int, ...]:
    """Indexes repeated by their weight.

    A uniform `choices()` over this table is a weighted draw about four times cheaper than
    `choices(cum_weights=...)`, which bisects for every draw.
    """
    return tuple(i for i, w in enumerate(weights) for _ in range(w))


# Entries per user: most fans pick one market, some enter several (one entry each).
_GROUP_SIZE_TABLE: Final = tuple(size + 1 for size in _table((70, 20, 8, 2)))
# additionalMarkets lengths.
_EXTRA_MARKETS_TABLE: Final = _table((55, 25, 15, 5))

_PLAIN_FIRST: Final = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Sofía", "Chloé", "Zoë", "José",
    "Siobhán", "Aoife", "Björn", "François", "Łukasz", "Mia", "Lucas", "Harper", "Ethan",
    "Camila", "Oisín", "Renée", "Jürgen", "Ximena",
)  # fmt: skip
_TRICKY_FIRST: Final = (
    "Anne\nMarie",
    "Jean, Jr.",
    '"Ace"',
    "=SUM(A1)",
    "+1",
    "-x",
    "@cmd",
    "\tTab",
    "\rCarriage",
    "李",
    "🎸 Rocker",
    "  Padded  ",
)
_PLAIN_LAST: Final = (
    "Smith", "García", "Müller", "O'Brien", "Nguyen", "Tremblay", "Hernández", "Walsh",
    "Murphy", "Kowalski", "Johnson", "Brown", "López", "Gagnon", "Ó Súilleabháin", "Dvořák",
    "Williams", "Martínez", "Byrne", "Roy",
)  # fmt: skip
_TRICKY_LAST: Final = (
    "Smith, Jr.",
    'Johnson "JJ"',
    "Line\nBreak",
    '=HYPERLINK("http://example.com")',
    "-x",
    "+44 20",
    "@cmd",
    "王",
    "",
    _ABSENT,
)
_FIRST_NAMES: Final[tuple[str, ...]] = _PLAIN_FIRST + _TRICKY_FIRST
_FIRST_TABLE: Final = _table([30] * len(_PLAIN_FIRST) + [1] * len(_TRICKY_FIRST))
_LAST_NAMES: Final[tuple[str | _Absent, ...]] = _PLAIN_LAST + _TRICKY_LAST
_LAST_TABLE: Final = _table([30] * len(_PLAIN_LAST) + [1] * len(_TRICKY_LAST))

# Slugging per document (NFKD normalisation) would dominate generation time.
_SLUGS: Final[dict[str, str]] = {}

_DOMAINS: Final = ("gmail.com", "yahoo.com", "hotmail.co.uk", "outlook.com", "icloud.com")

# How the email is rendered. Emails starting with `-` or `=` are legal and must reach the CSV
# verbatim (contract §6), so they are here on purpose.
_EMAIL_KINDS = range(7)
_EMAIL_NORMAL, _EMAIL_UPPER, _EMAIL_TAG, _EMAIL_DASH, _EMAIL_EQ, _EMAIL_EMPTY, _EMAIL_NONE = (
    _EMAIL_KINDS
)
_EMAIL_TABLE: Final = _table((900, 20, 20, 5, 5, 10, 40))

# countryCode renderings other than "the market's country, upper case".
_CC_VARIANTS: Final[tuple[str | _Absent, ...]] = (
    "us", "ca", "mx", "gb", "ie", "US", "CA", "MX", "GB", "IE", "DE", "AU", "FR", "de", "",
    _ABSENT,
)  # fmt: skip
_CC_TABLE: Final = _table([8] * 5 + [4] * 5 + [3, 3, 2, 1, 1, 12])
_CC_MARKET_SHARE: Final = 0.8

_LOCALES_BY_COUNTRY: Final[dict[str, tuple[str, ...]]] = {
    "US": ("en-US", "en-US", "en_us", "en-us", "es-US"),
    "CA": ("en-CA", "fr-CA", "en_ca", "fr_ca"),
    "MX": ("es-mx", "es-MX", "en-mx"),
    "GB": ("en-GB", "EN-uk", "en_gb", "en-uk"),
    "IE": ("en_IE", "en-IE", "en-ie", "ga-IE"),
    "DE": ("de-DE", "de"),
    "AU": ("en-AU", "en-nz"),
    "FR": ("fr-FR",),
}
# Free-form locales seen regardless of country, including garbage and absent.
_LOCALE_VARIANTS: Final[tuple[str | None | _Absent, ...]] = (
    "en-US", "en_us", "EN-uk", "en-mx", "en_IE", "en-nz", "fr-CA", "es-mx", "EN_US", "xx",
    "12-34", "english", "", None, _ABSENT,
)  # fmt: skip
_LOCALE_TABLE: Final = _table([6] * 9 + [2, 2, 1, 2, 1, 12])
_LOCALE_COUNTRY_SHARE: Final = 0.85

# (E.164 prefix, digits that follow it) for mobile numbers.
_PHONE_PREFIX: Final = {
    "US": ("+1", 10),
    "CA": ("+1", 10),
    "MX": ("+52", 10),
    "GB": ("+447", 9),
    "IE": ("+3538", 8),
    "DE": ("+4915", 9),
    "AU": ("+614", 8),
    "FR": ("+336", 8),
}

# Opt-in key states; missing means false to the consumer.
_OPTIN_KEYS: Final = ("allowMarketing", "allowLiveNation", "allowPromoter", "allowSms")
_OPTIN_WEIGHTS: Final = ((45, 40, 15), (35, 50, 15), (30, 55, 15), (30, 55, 15))
_OPTIN_STATES: Final = (True, False, _ABSENT)


def _optin_templates() -> tuple[tuple[Doc | _Absent, ...], tuple[int, ...]]:
    templates: list[Doc | _Absent] = []
    weights: list[int] = []
    for combo in product(range(3), repeat=len(_OPTIN_KEYS)):
        doc = {
            key: _OPTIN_STATES[s]
            for key, s in zip(_OPTIN_KEYS, combo, strict=True)
            if _OPTIN_STATES[s] is not _ABSENT
        }
        templates.append(doc)
        # Scaled down so that the draw table stays small; the rarest combination keeps 10.
        weights.append(round(math.prod(_OPTIN_WEIGHTS[k][s] for k, s in enumerate(combo)) / 5000))
    # Some old entries have no `optIns` object at all.
    templates.append(_ABSENT)
    weights.append(sum(weights) // 100)
    return tuple(templates), _table(weights)


_OPTIN_TEMPLATES, _OPTIN_TABLE = _optin_templates()

_SONGS: Final = (
    "Halo", "Crazy in Love", "Hoppípolla", "Kickstart My Heart", "Blinding Lights", "Dakiti",
    "Dog Days Are Over", "September", "Song, with comma", 'Say "hi"', "multi\nline",
    "=SUM(A1)", "+1", "-x", "@cmd", "\tTabbed", "¡Olé!", "",
)  # fmt: skip
# (id, label, answers). Free-text answers include formula-like and CSV-hostile values, other
# preferences store booleans and numbers as the real forms do.
_PREFERENCES: Final[tuple[tuple[str, str, tuple[Any, ...]], ...]] = (
    ("favorite_song", "What's your favorite song?", _SONGS),
    ("first_show", "Is this your first show?", (True, False)),
    ("tshirt_size", "T-shirt size", ("XS", "S", "M", "L", "XL", "XXL")),
    ("fan_since", "Fan since (year)", tuple(range(1995, 2027))),
)
# Share of entries that skipped a preference question.
_PREF_SKIP: Final = 0.1

# 32 symbols (no I, O, 0, 1), so a 10-character code is exactly 50 bits, built 10 bits at a time.
_CODE_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_CODE_PAIRS: Final = tuple(a + b for a in _CODE_ALPHABET for b in _CODE_ALPHABET)
_CODE_MASK: Final = (1 << 50) - 1
# Odd, hence coprime with the power-of-two space: index -> code is a bijection, so codes are
# unique without remembering them.
_CODE_MULT: Final = 0x9E3779B97F4A7C15 & _CODE_MASK | 1
# Four entries so that `counter & 3` picks one: one code in four is a VIP code.
_CODE_TYPES: Final = ("presale", "presale", "presale", "vip")

_SMS_STATUS_CYCLE: Final = ("SCHEDULED", "SENT", "CANCELLED")
# A waitlist is built from non-selected users, so SMS waves target them far more often.
_SMS_P_UNSELECTED: Final = 0.1
_SMS_P_SELECTED: Final = 0.02


# --------------------------------------------------------------------------------------------
# Helpers


def _ns(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:8]


def _oid(ns: str, kind: int, n: int) -> str:
    """24 hex characters like a stringified ObjectId; sorts in generation order per kind."""
    return f"{ns}{kind:02x}{n:014x}"


def _slug(name: str) -> str:
    slug = _SLUGS.get(name)
    if slug is None:
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        slug = "".join(c for c in ascii_name.lower() if c.isalnum()) or "fan"
        _SLUGS[name] = slug
    return slug


def _cover(
    rng: random.Random, values: list[int], positions: Sequence[int], variants: int
) -> set[int]:
    """Overwrite random positions so that each of `variants` indexes occurs at least once.

    Weighted draws alone would leave rare variants out of small data sets; forcing them per
    chunk guarantees coverage once a chunk has more positions than variants. Answers the
    positions it forced.
    """
    picked = rng.sample(positions, min(variants, len(positions)))
    for variant, pos in enumerate(picked):
        values[pos] = variant
    return set(picked)


def _ms(dt: datetime) -> datetime:
    # BSON dates have millisecond precision: keep what is generated equal to what is read back.
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class _Skeleton:
    """Who entered where, for one chunk: enough for scoring, codes and SMS waves."""

    start: int
    user_first: list[int]  # global index of the user's first entry, per entry
    market: list[int]  # market index, per entry


class _Context:
    """Values derived once per plan and shared by every pass."""

    def __init__(self, plan: SeedPlan) -> None:
        self.plan = plan
        self.ns = _ns(f"campaign:{plan.campaign_id}")
        self.user_ns = _ns(f"users:{plan.user_namespace or plan.campaign_id}")
        rng = random.Random(f"{plan.seed}/campaign")
        self.artist = rng.choice(_ARTISTS)
        self.created = _ms(plan.start)

        self.promoter_ids = [_promoter_id(i) for i in range(plan.promoters)]
        self.market_ids = [_oid(self.ns, _K_MARKET, i) for i in range(plan.markets)]
        self.market_country = [_CITIES[i % len(_CITIES)][2] for i in range(plan.markets)]
        # Entries concentrate on the first markets, as real demand does on big cities.
        self.market_table = _table([round(100 / math.sqrt(i + 1)) for i in range(plan.markets)])
        # Lazy, because plans with hundreds of markets would otherwise build millions of tuples.
        # Keys are (market, offset, count): see `_market_run`.
        m = plan.markets
        self.user_markets = _Pool(lambda key: _market_run(m, *key))
        self.additional_markets = _Pool(
            lambda key: tuple(
                self.market_ids[i] for i in _market_run(m, key[0], key[1], key[2] + 1)[1:]
            )
        )
        self.preferences = _PREFERENCES[: plan.preferences]

        self.entry_window_ms = 21 * _MS_PER_DAY
        self.wave_days = [
            plan.start.replace(hour=0, minute=0, second=0, microsecond=0)
            + timedelta(days=25 + 2 * i)
            for i in range(plan.wave_dates)
        ]
        self.wave_keys = [d.strftime("%Y%m%d") for d in self.wave_days]

        n = plan.entries
        self.selected_count = round(n * plan.selected_ratio)
        # rank(i) = (i * a + b) mod n + 1 is a permutation of 1..n when gcd(a, n) == 1: ranks
        # look random yet are computable per entry without sorting a million scores.
        a = max(1, int(n * 0.6180339887)) | 1
        while n and math.gcd(a, n) != 1:
            a += 2
        self.rank_a = a
        self.rank_b = rng.randrange(n) if n else 0

    def rank(self, entry_index: int) -> int:
        return (entry_index * self.rank_a + self.rank_b) % self.plan.entries + 1

    def chunks(self) -> range:
        return range(math.ceil(self.plan.entries / _CHUNK))

    def skeleton(self, chunk: int) -> _Skeleton:
        plan = self.plan
        start = chunk * _CHUNK
        end = min(plan.entries, start + _CHUNK)
        n = end - start
        rng = random.Random(f"{plan.seed}/skeleton/{chunk}")
        rand = rng.random
        m = plan.markets
        m1 = m - 1
        sizes = rng.choices(_GROUP_SIZE_TABLE, k=n)
        firsts = rng.choices(self.market_table, k=n)
        groups = self.user_markets
        user_first: list[int] = []
        market: list[int] = []
        uf_append = user_first.append
        mk_append = market.append
        g = start
        u = 0
        while g < end:
            k = sizes[u]
            m0 = firsts[u]
            u += 1
            if k == 1 or m1 == 0:
                uf_append(g)
                mk_append(m0)
                g += 1
                continue
            k = min(k, m, end - g)
            user_first.extend([g] * k)
            market.extend(groups[m0, int(rand() * m1), k])
            g += k
        return _Skeleton(start, user_first, market)

    def user_id(self, first_entry: int) -> str:
        return _oid(self.user_ns, _K_USER, first_entry)


def _market_run(markets: int, first: int, offset: int, count: int) -> tuple[int, ...]:
    """`first` followed by `count - 1` other market indexes, starting `offset` after it.

    Offsets 1..markets-1 taken consecutively are distinct and never `first`, so a user's
    entries (or an entry's additional markets) never repeat a market.
    """
    others = min(count, markets) - 1
    return (first, *((first + (offset + j) % (markets - 1) + 1) % markets for j in range(others)))


class _Pool(dict[tuple[int, ...], tuple[Any, ...]]):
    """Memo that computes missing keys on first use."""

    def __init__(self, make: Callable[[tuple[int, ...]], tuple[Any, ...]]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: tuple[int, ...]) -> tuple[Any, ...]:
        value = self[key] = self._make(key)
        return value


def _promoter_id(i: int) -> str:
    # Promoters are shared by all campaigns, so their ids ignore campaign and seed.
    return _oid(_ns("promoters"), _K_PROMOTER, i)


def _without_gc(make: Callable[..., list[Doc]], *args: Any) -> list[Doc]:
    """Build one chunk with the cyclic GC paused.

    A chunk allocates tens of thousands of acyclic dicts, which would trigger a GC pass every
    few hundred documents (about a quarter of generation time) for nothing to collect. The
    pause ends before the chunk is handed out, so callers never run with the GC off.
    """
    if not gc.isenabled():
        return make(*args)
    gc.disable()
    try:
        return make(*args)
    finally:
        gc.enable()


def _rebatch(chunks: Iterable[list[Doc]], size: int) -> Iterator[list[Doc]]:
    buf: list[Doc] = []
    for chunk in chunks:
        if buf:
            buf.extend(chunk)
        else:
            buf = chunk
        full = len(buf) - len(buf) % size
        for i in range(0, full, size):
            yield buf[i : i + size]
        buf = buf[full:]
    if buf:
        yield buf


# --------------------------------------------------------------------------------------------
# Collections


def _campaign(ctx: _Context) -> Doc:
    return {
        "_id": ctx.plan.campaign_id,
        "name": f"{ctx.artist}, Presale {ctx.plan.start.year + 1}",
        "artist": {"name": ctx.artist},
        "preferences": [{"id": pid, "label": label} for pid, label, _ in ctx.preferences],
        "date": {"created": ctx.created},
    }


def _promoters(ctx: _Context) -> list[Doc]:
    docs = []
    for i, pid in enumerate(ctx.promoter_ids):
        name = _PROMOTER_NAMES[i % len(_PROMOTER_NAMES)]
        if i >= len(_PROMOTER_NAMES):
            name = f"{name} {i // len(_PROMOTER_NAMES) + 1}"
        docs.append({"_id": pid, "name": name})
    return docs


def _markets(ctx: _Context) -> list[Doc]:
    plan = ctx.plan
    rng = random.Random(f"{plan.seed}/markets")
    p = plan.promoters
    docs = []
    for i, mid in enumerate(ctx.market_ids):
        city, state, _ = _CITIES[i % len(_CITIES)]
        if i >= len(_CITIES):
            city = f"{city} {i // len(_CITIES) + 1}"
        promoter_ids: list[str] = []
        # Round-robin covers every promoter; some markets are co-promoted, and the last one
        # has none (when there are spare markets) because such markets exist.
        if p and not (i == plan.markets - 1 and plan.markets > p):
            promoter_ids.append(ctx.promoter_ids[i % p])
            if i % 3 == 1 and p > 1:
                promoter_ids.append(ctx.promoter_ids[(i + 1) % p])
        if i == 0 and plan.dangling_promoter:
            promoter_ids.append(_oid(_ns("promoters"), _K_PROMOTER, 0xDEAD))
        event = (plan.start + timedelta(days=60 + 3 * i)).replace(
            hour=19 + rng.randrange(3), minute=30, second=0, microsecond=0
        )
        docs.append(
            {
                "_id": mid,
                "campaignId": plan.campaign_id,
                "name": f"{city}, {state}",
                "city": city,
                "state": state,
                "promoterIds": promoter_ids,
                "event": {"date": event},
            }
        )
    return docs


def _phone(rand: Callable[[], float], country: str) -> str:
    prefix, digits = _PHONE_PREFIX.get(country, ("+1", 10))
    low = 2 * 10 ** (digits - 1)
    number = f"{prefix}{low + int(rand() * (10**digits - low))}"
    if prefix == "+1" and rand() < 0.05:
        # Some forms stored the national format.
        d = number[2:]
        return f"({d[:3]}) {d[3:6]}-{d[6:]}"
    return number


_POSTAL_LETTERS: Final = "ABCEGHJKLMNPRSTVXY"
_POSTAL_POOL_SIZE: Final = 1024


@functools.cache
def _postal_pool(country: str) -> tuple[str, ...]:
    """Postal codes drawn from a fixed per-country pool.

    Fans share postal codes in reality, and formatting one per user costs more than the rest
    of the user's fields together.
    """
    rand = random.Random(f"postal/{country}").random

    def r(n: int) -> int:
        return int(rand() * n)

    letters = _POSTAL_LETTERS

    def one() -> str:
        if country == "US":
            return f"{r(100_000):05d}"  # leading zeros (e.g. 02134) must survive as text
        if country == "CA":
            return f"{letters[r(18)]}{r(10)}{letters[r(18)]} {r(10)}{letters[r(18)]}{r(10)}"
        if country == "MX":
            return f"{1 + r(99_999):05d}"
        if country == "GB":
            return f"SW{1 + r(19)} {r(10)}{letters[r(18)]}{letters[r(18)]}"
        if country == "IE":
            return f"D{1 + r(24):02d} {letters[r(18)]}{100 + r(900)}"
        return f"{1000 + r(99_000)}"

    return tuple(one() for _ in range(_POSTAL_POOL_SIZE))


def _entries_chunk(ctx: _Context, chunk: int) -> list[Doc]:
    plan = ctx.plan
    sk = ctx.skeleton(chunk)
    n = len(sk.market)
    rng = random.Random(f"{plan.seed}/entries/{chunk}")
    rand = rng.random
    choices = rng.choices
    start = sk.start
    user_first = sk.user_first
    markets = sk.market
    first_positions = [j for j in range(n) if user_first[j] == start + j]

    first_idx = choices(_FIRST_TABLE, k=n)
    last_idx = choices(_LAST_TABLE, k=n)
    email_kind = choices(_EMAIL_TABLE, k=n)
    cc_idx = choices(_CC_TABLE, k=n)
    loc_idx = choices(_LOCALE_TABLE, k=n)
    optin_idx = choices(_OPTIN_TABLE, k=n)
    extra_count = choices(_EXTRA_MARKETS_TABLE, k=n)
    domain = choices(_DOMAINS, k=n)
    pref_answers = [choices(answers, k=n) for _, _, answers in ctx.preferences]

    # Per-user draws only matter on each user's first entry, so coverage is forced there.
    _cover(rng, first_idx, first_positions, len(_FIRST_NAMES))
    _cover(rng, last_idx, first_positions, len(_LAST_NAMES))
    _cover(rng, email_kind, first_positions, len(_EMAIL_KINDS))
    _cover(rng, optin_idx, range(n), len(_OPTIN_TEMPLATES))
    # Only a minority of users take these variant draws, so the forced ones must take them.
    forced_cc = _cover(rng, cc_idx, first_positions, len(_CC_VARIANTS))
    forced_loc = _cover(rng, loc_idx, first_positions, len(_LOCALE_VARIANTS))

    campaign_id = plan.campaign_id
    market_ids = ctx.market_ids
    market_country = ctx.market_country
    extra_pool = ctx.additional_markets
    m1 = plan.markets - 1
    created0 = ctx.created
    window = ctx.entry_window_ms
    pref_ids = [pid for pid, _, _ in ctx.preferences]
    entry_prefix = f"{ctx.ns}{_K_ENTRY:02x}"
    user_prefix = f"{ctx.user_ns}{_K_USER:02x}"
    optin_templates = _OPTIN_TEMPLATES
    absent = _ABSENT
    td = timedelta

    docs: list[Doc] = []
    fields: Doc = {}
    locale: str | None | _Absent = absent
    country_code: str | _Absent = absent
    optins: Doc | _Absent = absent
    user_id = ""
    for j in range(n):
        g = start + j
        mk = markets[j]
        if user_first[j] == g:
            user_id = f"{user_prefix}{g:014x}"
            if j in forced_cc or rand() >= _CC_MARKET_SHARE:
                country_code = _CC_VARIANTS[cc_idx[j]]
            else:
                country_code = market_country[mk]
            home = country_code.upper() if isinstance(country_code, str) else ""
            if home not in _LOCALES_BY_COUNTRY:
                home = market_country[mk]
            if j in forced_loc or rand() >= _LOCALE_COUNTRY_SHARE:
                locale = _LOCALE_VARIANTS[loc_idx[j]]
            else:
                pool = _LOCALES_BY_COUNTRY[home]
                locale = pool[int(rand() * len(pool))]

            first_name = _FIRST_NAMES[first_idx[j]]
            last_name = _LAST_NAMES[last_idx[j]]
            fields = {}
            kind = email_kind[j]
            if kind != _EMAIL_NONE:
                fields["email"] = _email(kind, first_name, last_name, g, domain[j])
            fields["first_name"] = first_name
            if last_name is not absent:
                fields["last_name"] = last_name
            if rand() >= 0.05:
                fields["phone"] = _phone(rand, home)
            if rand() >= 0.05:
                fields["postal_code"] = _postal_pool(home)[int(rand() * _POSTAL_POOL_SIZE)]
            for pid, answers in zip(pref_ids, pref_answers, strict=True):
                if rand() >= _PREF_SKIP:
                    fields[pid] = answers[j]
            optins = optin_templates[optin_idx[j]]
        else:
            # A later entry of the same fan: mostly the same details, but sometimes changed,
            # which is what makes "keep the earliest entry's contact fields" observable.
            fields = dict(fields)
            r = rand()
            if r < 0.25 and "email" in fields:
                fields["email"] = f"{_slug(fields['first_name'])}.{g}@{domain[j]}"
            elif r < 0.35 and "phone" in fields:
                fields["phone"] = _phone(rand, market_country[mk])
            if rand() < 0.2:
                optins = optin_templates[optin_idx[j]]

        ms = int(rand() * window)
        fanscore = rand() * 100
        doc: Doc = {
            "_id": f"{entry_prefix}{g:014x}",
            "campaignId": campaign_id,
            "userId": user_id,
            "marketId": market_ids[mk],
            "fields": fields,
            "phoneConfirmed": "phone" in fields and rand() < 0.65,
            "verified": rand() < 0.75,
            "nudetect": {"score": int(rand() * 1000) / 1000},
            "accountFanscore": int(fanscore) if fanscore < 10 else int(fanscore * 100) / 100,
            "date": {"created": created0 + td(0, ms // 1000, 0, ms % 1000)},
        }
        # Legacy entries lack the key altogether.
        if rand() >= 0.03:
            doc["additionalMarkets"] = list(extra_pool[mk, int(rand() * m1), extra_count[j]])
        if locale is not absent:
            doc["locale"] = locale
        if country_code is not absent:
            doc["countryCode"] = country_code
        if optins is not absent:
            doc["optIns"] = dict(optins)
        docs.append(doc)
    return docs


def _email(kind: int, first: str, last: str | _Absent, g: int, domain: str) -> str:
    if kind == _EMAIL_EMPTY:
        return ""
    local = f"{_slug(first)}.{_slug(last) if isinstance(last, str) else 'x'}{g}"
    if kind == _EMAIL_UPPER:
        return f"{local.upper()}@{domain.upper()}"
    if kind == _EMAIL_TAG:
        return f"{local}+presale@{domain}"
    if kind == _EMAIL_DASH:
        return f"-{local}@{domain}"
    if kind == _EMAIL_EQ:
        return f"={local}@{domain}"
    return f"{local}@{domain}"


def _scoring_chunk(ctx: _Context, chunk: int) -> list[Doc]:
    sk = ctx.skeleton(chunk)
    n_entries = ctx.plan.entries
    selected_count = ctx.selected_count
    rank_a, rank_b = ctx.rank_a, ctx.rank_b
    scale = 100.0 / n_entries
    campaign_id = ctx.plan.campaign_id
    market_ids = ctx.market_ids
    scoring_prefix = f"{ctx.ns}{_K_SCORING:02x}"
    entry_prefix = f"{ctx.ns}{_K_ENTRY:02x}"
    user_prefix = f"{ctx.user_ns}{_K_USER:02x}"
    docs = []
    g = sk.start
    for first, mk in zip(sk.user_first, sk.market, strict=True):
        rank = (g * rank_a + rank_b) % n_entries + 1  # == ctx.rank(g), inlined for speed
        docs.append(
            {
                "_id": f"{scoring_prefix}{g:014x}",
                "campaignId": campaign_id,
                "userId": f"{user_prefix}{first:014x}",
                "entryId": f"{entry_prefix}{g:014x}",
                "marketId": market_ids[mk],
                # Strictly decreasing with rank, so score order and rank agree.
                "score": round((n_entries - rank + 1) * scale, 6),
                "rank": rank,
                "selected": rank <= selected_count,
            }
        )
        g += 1
    return docs


def _code_string(index: int, offset: int) -> str:
    x = (index * _CODE_MULT + offset) & _CODE_MASK
    pairs = _CODE_PAIRS
    return (
        pairs[x & 1023]
        + pairs[x >> 10 & 1023]
        + pairs[x >> 20 & 1023]
        + pairs[x >> 30 & 1023]
        + pairs[x >> 40 & 1023]
    )


def _codes_chunk(ctx: _Context, chunk: int, counter: int) -> list[Doc]:
    """Codes of one entry chunk, numbered from `counter`."""
    plan = ctx.plan
    campaign_id = plan.campaign_id
    waves = len(ctx.wave_days)
    selected_count = ctx.selected_count
    # Differs per campaign, so two seeded campaigns do not hand out the same codes.
    code_offset = int(_ns(f"codes:{campaign_id}"), 16)
    code_prefix = f"{ctx.ns}{_K_CODE:02x}"
    user_prefix = f"{ctx.user_ns}{_K_USER:02x}"
    market_ids = ctx.market_ids
    wave_keys = ctx.wave_keys
    # Codes go out from 09:00 over the following twelve hours of the wave day.
    wave_starts = [day + timedelta(hours=9) for day in ctx.wave_days]
    half_day_s = _MS_PER_DAY / 2000
    n_entries = plan.entries
    rank_a, rank_b = ctx.rank_a, ctx.rank_b
    sk = ctx.skeleton(chunk)
    rand = random.Random(f"{plan.seed}/codes/{chunk}").random
    docs: list[Doc] = []
    g = sk.start
    for first, mk in zip(sk.user_first, sk.market, strict=True):
        rank = (g * rank_a + rank_b) % n_entries + 1  # == ctx.rank(g), inlined for speed
        g += 1
        if rank > selected_count:
            continue
        # Best-ranked fans are served in the first wave.
        wave = (rank - 1) * waves // selected_count
        docs.append(
            {
                "_id": f"{code_prefix}{counter:014x}",
                "campaignId": campaign_id,
                "code": _code_string(counter, code_offset),
                "marketId": market_ids[mk],
                "type": _CODE_TYPES[counter & 3],
                "status": "ASSIGNED",
                "assignedTo": f"{user_prefix}{first:014x}",
                "waveDateKey": wave_keys[wave],
                "date": {"assigned": wave_starts[wave] + timedelta(0, int(rand() * half_day_s))},
            }
        )
        counter += 1
    spare = round(len(sk.market) * plan.spare_code_ratio)
    # At least one of each unassigned status per chunk, so small plans cover both.
    if spare < 2 and sk.market and plan.spare_code_ratio > 0:
        spare = 2
    for s in range(spare):
        docs.append(
            {
                "_id": f"{code_prefix}{counter:014x}",
                "campaignId": campaign_id,
                "code": _code_string(counter, code_offset),
                "marketId": ctx.market_ids[int(rand() * plan.markets)],
                "type": _CODE_TYPES[counter & 3],
                "status": "RESERVED" if s % 6 == 1 else "AVAILABLE",
                "assignedTo": None,
                "waveDateKey": None,
                "date": {},
            }
        )
        counter += 1
    return docs


def _codes(ctx: _Context) -> Iterator[list[Doc]]:
    counter = 0
    for chunk in ctx.chunks():
        docs = _without_gc(_codes_chunk, ctx, chunk, counter)
        counter += len(docs)
        yield docs


def _sms_waves(ctx: _Context) -> list[Doc]:
    plan = ctx.plan
    count = plan.sms_waves
    if count == 0:
        return []
    members: list[list[str]] = [[] for _ in range(count)]
    cap = plan.sms_wave_max_members
    for chunk in ctx.chunks():
        sk = ctx.skeleton(chunk)
        rng = random.Random(f"{plan.seed}/sms/{chunk}")
        rand = rng.random
        for j, first in enumerate(sk.user_first):
            g = sk.start + j
            if first != g:
                continue
            p = _SMS_P_SELECTED if ctx.rank(g) <= ctx.selected_count else _SMS_P_UNSELECTED
            for w in range(count):
                if rand() < p and len(members[w]) < cap:
                    members[w].append(ctx.user_id(first))
    docs = []
    for w in range(count):
        status = _SMS_STATUS_CYCLE[w % len(_SMS_STATUS_CYCLE)]
        day = ctx.wave_days[w % len(ctx.wave_days)]
        docs.append(
            {
                "_id": _oid(ctx.ns, _K_WAVE, w),
                "campaignId": plan.campaign_id,
                "status": status,
                "memberIds": members[w],
                "date": {"scheduled": day + timedelta(hours=14 + w)},
            }
        )
    return docs


# --------------------------------------------------------------------------------------------
# Public API


def generate(plan: SeedPlan, batch_size: int = 5_000) -> Iterator[tuple[str, list[Doc]]]:
    """Yield ``(collection, documents)`` batches for one campaign, lazily.

    Collections come in the order of `COLLECTIONS`; each batch holds at most `batch_size`
    documents (SMS waves are small and come as one batch). The documents do not depend on
    `batch_size`. Promoters are global: identical for every campaign and seed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ctx = _Context(plan)
    yield CAMPAIGNS, [_campaign(ctx)]
    if plan.promoters:
        yield from ((PROMOTERS, b) for b in _rebatch([_promoters(ctx)], batch_size))
    yield from ((MARKETS, b) for b in _rebatch([_markets(ctx)], batch_size))
    entries = (_without_gc(_entries_chunk, ctx, c) for c in ctx.chunks())
    yield from ((ENTRIES, b) for b in _rebatch(entries, batch_size))
    scoring = (_without_gc(_scoring_chunk, ctx, c) for c in ctx.chunks())
    yield from ((SCORING, b) for b in _rebatch(scoring, batch_size))
    yield from ((CODES, b) for b in _rebatch(_codes(ctx), batch_size))
    waves = _sms_waves(ctx)
    if waves:
        yield SMS_WAVES, waves


async def seed(
    db: AsyncDatabase[dict[str, Any]], plan: SeedPlan, *, batch_size: int = 5_000
) -> dict[str, int]:
    """Insert the plan's documents into `db`; answer the number inserted per collection.

    Promoters are shared by campaigns, so seeding a second campaign into the same database
    skips the promoters that already exist instead of failing.
    """
    counts = dict.fromkeys(COLLECTIONS, 0)
    for name, batch in generate(plan, batch_size):
        try:
            result = await db[name].insert_many(batch, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if name != PROMOTERS or any(e.get("code") != 11000 for e in errors):
                raise
            counts[name] += int(exc.details.get("nInserted", 0))
            continue
        counts[name] += len(result.inserted_ids)
    return counts
