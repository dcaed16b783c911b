"""Pure tests of the data generator: no database involved."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from export_service.dev.seed import COLLECTIONS, SeedPlan, generate, seed

Doc = dict[str, Any]
Data = dict[str, list[Doc]]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def collect(plan: SeedPlan, batch_size: int = 5_000) -> Data:
    data: Data = {name: [] for name in COLLECTIONS}
    for name, batch in generate(plan, batch_size):
        assert 0 < len(batch) <= batch_size
        data[name].extend(batch)
    return data


@pytest.fixture(scope="module")
def data() -> Data:
    return collect(SeedPlan())


def entries_by_user(data: Data) -> dict[str, list[Doc]]:
    users: dict[str, list[Doc]] = defaultdict(list)
    for entry in data["entries"]:
        users[entry["userId"]].append(entry)
    return users


def walk(value: Any) -> Any:
    """Every scalar inside a document, nested dicts and lists included."""
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
    else:
        yield value


# --- determinism and shape ---------------------------------------------------------------------


def test_same_plan_gives_same_documents(data: Data) -> None:
    assert collect(SeedPlan()) == data


def test_documents_do_not_depend_on_batch_size(data: Data) -> None:
    assert collect(SeedPlan(), batch_size=7) == data


def test_seed_changes_the_data(data: Data) -> None:
    other = collect(SeedPlan(seed=7))
    assert other["entries"] != data["entries"]
    assert len(other["entries"]) == len(data["entries"])


def test_collections_come_in_order_and_counts_match_the_plan(data: Data) -> None:
    order = [name for name, _ in generate(SeedPlan(), batch_size=100)]
    assert [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name] == list(
        COLLECTIONS
    )
    assert len(data["campaigns"]) == 1
    assert len(data["markets"]) == 6
    assert len(data["promoters"]) == 4
    assert len(data["entries"]) == 1_000
    assert len(data["scoring"]) == 1_000
    assert len(data["sms_waves"]) == 4


def test_ids_are_unique_strings_and_dates_are_naive_milliseconds(data: Data) -> None:
    for name, docs in data.items():
        ids = [d["_id"] for d in docs]
        assert all(isinstance(i, str) and i for i in ids), name
        assert len(set(ids)) == len(ids), name
        for doc in docs:
            for value in walk(doc):
                if isinstance(value, datetime):
                    assert value.tzinfo is None
                    # BSON keeps milliseconds only; anything finer would not round-trip.
                    assert value.microsecond % 1000 == 0


def test_field_names_follow_the_design(data: Data) -> None:
    (campaign,) = data["campaigns"]
    assert set(campaign) == {"_id", "name", "artist", "preferences", "date"}
    assert set(campaign["artist"]) == {"name"} and set(campaign["date"]) == {"created"}
    for market in data["markets"]:
        assert set(market) == {"_id", "campaignId", "name", "city", "state", "promoterIds", "event"}
        assert isinstance(market["event"]["date"], datetime)
    for promoter in data["promoters"]:
        assert set(promoter) == {"_id", "name"}
    entry_keys = {"_id", "campaignId", "userId", "marketId", "additionalMarkets", "locale"}
    entry_keys |= {"countryCode", "fields", "optIns", "phoneConfirmed", "verified", "nudetect"}
    entry_keys |= {"accountFanscore", "date"}
    field_keys = {"email", "first_name", "last_name", "phone", "postal_code"}
    field_keys |= {p["id"] for p in campaign["preferences"]}
    for entry in data["entries"]:
        assert set(entry) <= entry_keys
        assert {"_id", "campaignId", "userId", "marketId", "fields", "date"} <= set(entry)
        assert set(entry["fields"]) <= field_keys
        assert set(entry.get("optIns", {})) <= {
            "allowMarketing",
            "allowLiveNation",
            "allowPromoter",
            "allowSms",
        }
        assert all(isinstance(v, bool) for v in entry.get("optIns", {}).values())
        assert isinstance(entry["phoneConfirmed"], bool) and isinstance(entry["verified"], bool)
        assert isinstance(entry["nudetect"]["score"], float)
        assert isinstance(entry["accountFanscore"], int | float)
        assert isinstance(entry["date"]["created"], datetime)
    for record in data["scoring"]:
        assert set(record) == {
            "_id",
            "campaignId",
            "userId",
            "entryId",
            "marketId",
            "score",
            "rank",
            "selected",
        }
    for code in data["codes"]:
        assert set(code) == {
            "_id",
            "campaignId",
            "code",
            "marketId",
            "type",
            "status",
            "assignedTo",
            "waveDateKey",
            "date",
        }
    for wave in data["sms_waves"]:
        assert set(wave) == {"_id", "campaignId", "status", "memberIds", "date"}
        assert isinstance(wave["date"]["scheduled"], datetime)


# --- referential integrity ---------------------------------------------------------------------


def assert_integrity(data: Data, plan: SeedPlan) -> None:
    (campaign,) = data["campaigns"]
    assert campaign["_id"] == plan.campaign_id
    market_ids = {m["_id"] for m in data["markets"]}
    promoter_ids = {p["_id"] for p in data["promoters"]}
    entries = {e["_id"]: e for e in data["entries"]}
    users = {e["userId"] for e in data["entries"]}
    for name in ("markets", "entries", "scoring", "codes", "sms_waves"):
        assert all(d["campaignId"] == plan.campaign_id for d in data[name]), name
    for market in data["markets"]:
        assert set(market["promoterIds"]) <= promoter_ids
    for entry in data["entries"]:
        assert entry["marketId"] in market_ids
        extra = entry.get("additionalMarkets", [])
        assert set(extra) <= market_ids
        assert entry["marketId"] not in extra
        assert len(set(extra)) == len(extra)
    for record in data["scoring"]:
        entry = entries[record["entryId"]]
        assert (record["userId"], record["marketId"]) == (entry["userId"], entry["marketId"])
    assert sorted(r["entryId"] for r in data["scoring"]) == sorted(entries)
    for code in data["codes"]:
        assert code["marketId"] in market_ids
        assert code["assignedTo"] is None or code["assignedTo"] in users
    for wave in data["sms_waves"]:
        assert set(wave["memberIds"]) <= users
        assert len(set(wave["memberIds"])) == len(wave["memberIds"])


def test_referential_integrity(data: Data) -> None:
    assert_integrity(data, SeedPlan())


def test_every_promoter_is_used_by_some_market(data: Data) -> None:
    used = {pid for m in data["markets"] for pid in m["promoterIds"]}
    assert used == {p["_id"] for p in data["promoters"]}
    assert any(len(m["promoterIds"]) > 1 for m in data["markets"])


def test_markets_span_the_five_countries(data: Data) -> None:
    cities = {m["city"] for m in data["markets"]}
    assert {"New York", "Toronto", "London", "Dublin"} <= cities
    assert any("México" in c for c in cities)
    assert all(", " in m["name"] for m in data["markets"])


def test_integrity_across_chunks_and_for_edge_plans() -> None:
    plans = [
        SeedPlan(campaign_id="big", entries=25_003, seed=3),  # several internal chunks
        SeedPlan(campaign_id="tiny", entries=0),
        SeedPlan(campaign_id="one-market", entries=50, markets=1),
        SeedPlan(campaign_id="no-promoters", entries=50, promoters=0),
        SeedPlan(campaign_id="many", entries=500, markets=40, promoters=9, preferences=4),
    ]
    for plan in plans:
        data = collect(plan, batch_size=4_096)
        assert len(data["entries"]) == plan.entries
        assert len(data["scoring"]) == plan.entries
        assert_integrity(data, plan)
        for name, docs in data.items():
            assert len({d["_id"] for d in docs}) == len(docs), (plan.campaign_id, name)
        assert len({c["code"] for c in data["codes"]}) == len(data["codes"])


def test_dangling_promoter_knob() -> None:
    data = collect(SeedPlan(entries=10, dangling_promoter=True))
    promoter_ids = {p["_id"] for p in data["promoters"]}
    dangling = {pid for m in data["markets"] for pid in m["promoterIds"]} - promoter_ids
    assert len(dangling) == 1


def test_campaigns_do_not_collide_and_user_namespace_shares_fans() -> None:
    a = collect(SeedPlan(campaign_id="camp-a", entries=300))
    b = collect(SeedPlan(campaign_id="camp-b", entries=300))
    for name in COLLECTIONS:
        shared = {d["_id"] for d in a[name]} & {d["_id"] for d in b[name]}
        # Promoters are global on purpose; nothing else may clash in one database.
        assert bool(shared) == (name == "promoters"), name
    assert not {e["userId"] for e in a["entries"]} & {e["userId"] for e in b["entries"]}
    assert not {c["code"] for c in a["codes"]} & {c["code"] for c in b["codes"]}

    c = collect(SeedPlan(campaign_id="camp-c", entries=300, user_namespace="fans"))
    d = collect(SeedPlan(campaign_id="camp-d", entries=300, user_namespace="fans"))
    assert {e["userId"] for e in c["entries"]} & {e["userId"] for e in d["entries"]}
    assert not {e["_id"] for e in c["entries"]} & {e["_id"] for e in d["entries"]}


# --- users with several entries ----------------------------------------------------------------


def test_multi_market_users(data: Data) -> None:
    users = entries_by_user(data)
    multi = {u: es for u, es in users.items() if len(es) > 1}
    assert len(multi) >= 50
    assert max(len(es) for es in multi.values()) >= 3
    for entries in users.values():
        markets = [e["marketId"] for e in entries]
        assert len(set(markets)) == len(markets), "one entry per market per user"
    # Some later entries changed contact details, so "keep the earliest entry" is observable...
    assert any(len({e["fields"].get("email") for e in es}) > 1 for es in multi.values())
    # ...and the earliest entry is not always the first one by id.
    assert any(
        min(es, key=lambda e: e["date"]["created"]) is not min(es, key=lambda e: e["_id"])
        for es in multi.values()
    )


def test_additional_markets_variants(data: Data) -> None:
    lengths = Counter(
        len(e["additionalMarkets"]) for e in data["entries"] if "additionalMarkets" in e
    )
    assert {0, 1, 2, 3} <= set(lengths)
    assert any("additionalMarkets" not in e for e in data["entries"])


# --- variant coverage --------------------------------------------------------------------------


def test_every_locale_variant(data: Data) -> None:
    locales = {e["locale"] for e in data["entries"] if "locale" in e}
    expected = {"en-US", "en_us", "EN-uk", "en-mx", "en_IE", "en-nz", "fr-CA", "es-mx"}
    assert expected <= locales
    assert {"xx", "12-34", "", None} <= locales
    assert any("locale" not in e for e in data["entries"])


def test_every_country_code_variant(data: Data) -> None:
    codes = {e["countryCode"] for e in data["entries"] if "countryCode" in e}
    assert {"US", "CA", "MX", "GB", "IE"} <= codes
    assert {"us", "ca", "mx", "gb", "ie"} <= codes
    assert {"DE", "AU"} <= codes
    assert any("countryCode" not in e for e in data["entries"])


def test_opt_in_mixes(data: Data) -> None:
    entries = data["entries"]
    for key in ("allowMarketing", "allowLiveNation", "allowPromoter", "allowSms"):
        states = Counter(e["optIns"].get(key, "missing") for e in entries if "optIns" in e)
        assert states[True] and states[False] and states["missing"], key
    assert any("optIns" not in e for e in entries)
    # Combinations the opt-in exports filter on.
    assert any(
        e.get("optIns", {}).get("allowSms") and e["phoneConfirmed"] and e["fields"].get("phone")
        for e in entries
    )
    assert any(e.get("optIns", {}).get("allowSms") and not e["phoneConfirmed"] for e in entries)


def test_flags_scores_and_fanscores(data: Data) -> None:
    entries = data["entries"]
    assert {e["phoneConfirmed"] for e in entries} == {True, False}
    assert {e["verified"] for e in entries} == {True, False}
    assert not any(e["phoneConfirmed"] and "phone" not in e["fields"] for e in entries)
    assert all(0 <= e["nudetect"]["score"] <= 1 for e in entries)
    fanscores = [e["accountFanscore"] for e in entries]
    assert all(0 <= f <= 100 for f in fanscores)
    assert any(isinstance(f, int) for f in fanscores) and any(
        isinstance(f, float) for f in fanscores
    )


def test_contact_field_variants(data: Data) -> None:
    fields = [e["fields"] for e in data["entries"]]
    assert any("email" not in f for f in fields)
    assert any(f.get("email") == "" for f in fields)
    emails = [f["email"] for f in fields if f.get("email")]
    assert all("@" in e for e in emails)
    # Emails are written verbatim, even those a spreadsheet would read as formulas.
    assert any(e.startswith("-") for e in emails) and any(e.startswith("=") for e in emails)
    assert any(e != e.lower() for e in emails)
    assert any("phone" not in f for f in fields)
    assert any(f.get("phone", "").startswith("+") for f in fields)
    assert any("postal_code" not in f for f in fields)
    assert any(re.fullmatch(r"0\d{4}", f.get("postal_code", "")) for f in fields)
    assert any(re.fullmatch(r"[A-Z]\d[A-Z] \d[A-Z]\d", f.get("postal_code", "")) for f in fields)


def test_awkward_names(data: Data) -> None:
    names = [
        f.get(k)
        for f in (e["fields"] for e in data["entries"])
        for k in ("first_name", "last_name")
    ]
    texts = [n for n in names if isinstance(n, str)]
    assert any(any(ord(c) > 127 for c in n) for n in texts), "unicode"
    assert any(any(ord(c) > 0xFFFF for c in n) for n in texts), "astral plane (emoji)"
    assert any("," in n for n in texts)
    assert any('"' in n for n in texts)
    assert any("'" in n for n in texts)
    assert any("\n" in n for n in texts)
    for start in FORMULA_STARTS:
        assert any(n.startswith(start) for n in texts), repr(start)
    assert {"=SUM(A1)", "+1", "-x", "@cmd"} <= set(texts)
    assert "" in texts
    assert any("last_name" not in e["fields"] for e in data["entries"])


def test_preferences_and_answers(data: Data) -> None:
    (campaign,) = data["campaigns"]
    prefs = campaign["preferences"]
    assert 2 <= len(prefs) <= 3
    assert all(set(p) == {"id", "label"} and isinstance(p["id"], str) for p in prefs)
    for pref in prefs:
        answers = [e["fields"][pref["id"]] for e in data["entries"] if pref["id"] in e["fields"]]
        assert len(answers) > 500, pref["id"]
        assert any(pref["id"] not in e["fields"] for e in data["entries"]), "skipped question"
    free_text = {e["fields"].get("favorite_song") for e in data["entries"]}
    assert {"=SUM(A1)", "+1", "-x", "@cmd", "Song, with comma", 'Say "hi"', "multi\nline"} <= (
        free_text
    )
    assert {e["fields"].get("first_show") for e in data["entries"]} >= {True, False}


# --- scoring, codes, SMS waves -----------------------------------------------------------------


def test_scoring_ranks_scores_and_selection(data: Data) -> None:
    records = data["scoring"]
    assert sorted(r["rank"] for r in records) == list(range(1, len(records) + 1))
    by_rank = sorted(records, key=lambda r: r["rank"])
    scores = [r["score"] for r in by_rank]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(r["rank"], int) and isinstance(r["score"], float) for r in records)
    selected = Counter(r["selected"] for r in records)
    assert selected[True] == 300 and selected[False] == 700
    assert all(r["selected"] == (r["rank"] <= 300) for r in records)


def test_codes_statuses_assignments_and_waves(data: Data) -> None:
    codes = data["codes"]
    assert len({c["code"] for c in codes}) == len(codes)
    assert {c["status"] for c in codes} == {"AVAILABLE", "RESERVED", "ASSIGNED"}
    assert {c["type"] for c in codes} == {"presale", "vip"}
    wave_keys = Counter(c["waveDateKey"] for c in codes if c["assignedTo"])
    assert 2 <= len(wave_keys) <= 3
    for code in codes:
        if code["status"] == "ASSIGNED":
            assert code["assignedTo"] and re.fullmatch(r"\d{8}", code["waveDateKey"])
            assigned = code["date"]["assigned"]
            assert assigned.strftime("%Y%m%d") == code["waveDateKey"]
        else:
            assert code["assignedTo"] is None and code["waveDateKey"] is None
            assert code["date"].get("assigned") is None
    # Assigned codes go to selected fans in the market they were selected for.
    selected = {(r["userId"], r["marketId"]) for r in data["scoring"] if r["selected"]}
    assigned = {(c["assignedTo"], c["marketId"]) for c in codes if c["assignedTo"]}
    assert assigned == selected


def test_sms_waves_cover_every_status_and_the_waitlist_cases(data: Data) -> None:
    waves = data["sms_waves"]
    assert {w["status"] for w in waves} == {"SCHEDULED", "SENT", "CANCELLED"}
    assert all(w["memberIds"] for w in waves)
    scheduled = {u for w in waves if w["status"] == "SCHEDULED" for u in w["memberIds"]}
    other = {u for w in waves if w["status"] != "SCHEDULED" for u in w["memberIds"]}
    not_selected = {r["userId"] for r in data["scoring"] if not r["selected"]}
    # The waitlist excludes users of SCHEDULED waves only: all three cases must exist.
    assert not_selected & scheduled
    assert (not_selected & other) - scheduled
    assert not_selected - scheduled - other


def test_sms_wave_member_cap() -> None:
    data = collect(SeedPlan(entries=2_000, sms_wave_max_members=5))
    assert all(len(w["memberIds"]) == 5 for w in data["sms_waves"])


# --- plan validation and seeding ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"entries": -1},
        {"markets": 0},
        {"promoters": -1},
        {"preferences": 9},
        {"selected_ratio": 1.5},
        {"start": datetime.fromisoformat("2026-09-01T00:00:00+00:00")},
    ],
)
def test_bad_plans_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SeedPlan(**kwargs)


def test_bad_batch_size_is_rejected() -> None:
    with pytest.raises(ValueError):
        next(generate(SeedPlan(), batch_size=0))


class _Result:
    def __init__(self, ids: list[Any]) -> None:
        self.inserted_ids = ids


class _FakeCollection:
    def __init__(self, store: dict[str, list[Doc]], name: str) -> None:
        self.store, self.name = store, name

    async def insert_many(self, docs: list[Doc], ordered: bool = True) -> _Result:
        assert ordered is False
        existing = {d["_id"] for d in self.store[self.name]}
        fresh = [d for d in docs if d["_id"] not in existing]
        self.store[self.name].extend(fresh)
        if len(fresh) < len(docs):
            dupes = [
                {"code": 11000, "index": i} for i, d in enumerate(docs) if d["_id"] in existing
            ]
            raise BulkWriteError({"writeErrors": dupes, "nInserted": len(fresh)})
        return _Result([d["_id"] for d in docs])


class _FakeDb:
    """Just enough of AsyncDatabase for `seed()`: this is not a database test."""

    def __init__(self) -> None:
        self.store: dict[str, list[Doc]] = defaultdict(list)

    def __getitem__(self, name: str) -> _FakeCollection:
        return _FakeCollection(self.store, name)


async def test_seed_inserts_everything_and_tolerates_shared_promoters() -> None:
    db = _FakeDb()
    first = await seed(db, SeedPlan(campaign_id="one", entries=120), batch_size=50)  # type: ignore[arg-type]
    assert first == {name: len(db.store[name]) for name in COLLECTIONS}
    assert first["entries"] == 120 and first["promoters"] == 4
    second = await seed(db, SeedPlan(campaign_id="two", entries=80))  # type: ignore[arg-type]
    assert second["promoters"] == 0 and second["entries"] == 80
    assert len(db.store["entries"]) == 200
