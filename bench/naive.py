"""The `entries` export as a user would write it instead: pymongo, csv.DictWriter, put_object.

The yardstick of contract §15's end-to-end target: the service must never be behind this
script on the same data. It is what one writes in a few minutes: the synchronous driver, one
find of the campaign's entries in `_id` order (whole documents), one `DictWriter.writerow` per
entry into memory, and a single `put_object` of the result (boto3). No preliminary count, no
progress, no formula neutralising, no multipart upload, no clean-up on failure.

`bench/end_to_end.py` runs it as a process of its own, interleaved with the export and the
drain; its time is measured inside the script, from connecting to the end of the upload
(interpreter start and imports left out, as a running worker has them behind it too):

    .venv/bin/python -m bench.naive --uri URI --db DB --campaign C --s3 URL --bucket B
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from typing import Any

import boto3
from pymongo import MongoClient

COLUMNS = (
    "entry_id",
    "user_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "postal_code",
    "country_code",
    "locale",
    "market_id",
    "market_name",
    "created_at",
)


def export(uri: str, db_name: str, campaign_id: str, s3_url: str, bucket: str) -> dict[str, Any]:
    started = time.perf_counter()
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = client[db_name]
        campaign = db["campaigns"].find_one({"_id": campaign_id}) or {}
        names = {m["_id"]: m.get("name") for m in db["markets"].find({"campaignId": campaign_id})}
        preferences = [str(p["id"]) for p in campaign.get("preferences") or []]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*COLUMNS, *preferences])
        writer.writeheader()
        rows = 0
        for entry in db["entries"].find({"campaignId": campaign_id}).sort("_id", 1):
            fields = entry.get("fields") or {}
            row = {
                "entry_id": entry["_id"],
                "user_id": entry.get("userId"),
                "email": fields.get("email"),
                "first_name": fields.get("first_name"),
                "last_name": fields.get("last_name"),
                "phone": fields.get("phone"),
                "postal_code": fields.get("postal_code"),
                "country_code": entry.get("countryCode"),
                "locale": entry.get("locale"),
                "market_id": entry.get("marketId"),
                "market_name": names.get(entry.get("marketId")),
                "created_at": (entry.get("date") or {}).get("created"),
            }
            for preference in preferences:
                row[preference] = fields.get(preference)
            writer.writerow(row)
            rows += 1
        body = out.getvalue().encode()
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        s3.put_object(Bucket=bucket, Key=f"naive/{campaign_id}.csv", Body=body)
    finally:
        client.close()
    return {"seconds": round(time.perf_counter() - started, 3), "rows": rows, "bytes": len(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--campaign", required=True)
    parser.add_argument("--s3", required=True)
    parser.add_argument("--bucket", required=True)
    args = parser.parse_args()
    print(json.dumps(export(args.uri, args.db, args.campaign, args.s3, args.bucket)))


if __name__ == "__main__":
    main()
