"""Demo data for trying the admin and for the scale benchmark (bench/admin_scale.py)."""
from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone

from audit_app import latency, rollups
from audit_app.ledger import call_mac
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import (ApiCall, BatchRecord, BatchResult, BatchStatus, FileOrigin, FileRecord,
                              ModelPrice, Outcome, UploadRecord)
from audit_app.recorder import priced_fields
from audit_app.usage import Usage
from proxy_app.models import RelayKey

CHUNK = 5000
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
# Chat models (weight); the fine-tune is priced at its base's fine-tuned rates; the last
# has no price in the shipped map on purpose: its calls show up as unpriced.
CHAT_MODELS = (("gpt-4o-mini", 35), ("gpt-4.1-mini", 20), ("gpt-4o", 14), ("gpt-5-mini", 10),
               ("o4-mini", 6), ("gpt-4.1", 5), ("ft:gpt-4o-mini-2024-07-18:acme:support:B7x2k", 4),
               ("gpt-4.5-preview", 3))
REASONING = ("gpt-5-mini", "o4-mini")
EMBEDDING_MODEL = "text-embedding-3-small"
FAMILIES = (("responses", 45), ("chat", 30), ("embeddings", 15), ("models", 4), ("files", 3),
            ("batches", 3))
AGENTS = ("OpenAI/Python 1.99.9", "OpenAI/Python 2.3.0", "OpenAI/JS 5.12.1", "curl/8.5.0",
          "Mozilla/5.0 (compatible; ChatGPT-User/1.0)")
BATCH_ERRORS = (
    ("invalid_request_error", "max_tokens is too large: 40000. This model supports at most 16384 completion tokens."),
    ("invalid_request_error", "Invalid 'messages[0].content': string too long."),
    ("context_length_exceeded", "This model's maximum context length is 128000 tokens."),
    ("model_not_found", "The model 'gpt-4o-mini-legacy' does not exist or you do not have access to it."),
)
ROLLUP_COUNTERS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                   "total_tokens", "images", "audio_seconds", "characters", "cost")


@dataclass
class Summary:
    calls: int = 0
    buckets: int = 0
    files: int = 0
    uploads: int = 0
    batches: int = 0
    results: int = 0
    cost: Decimal = Decimal(0)
    unpriced: int = 0


_CALL_FIELDS = [f for f in ApiCall._meta.concrete_fields if not f.primary_key]
_CALL_DEFAULTS = {f.attname: f.get_default() for f in _CALL_FIELDS}


class _RowInserter:
    """Inserts call rows straight from their values: building model instances and
    preparing every field through the ORM would take most of a million-row run.
    PostgreSQL gets COPY; SQLite an executemany of one prepared statement."""

    def __init__(self) -> None:
        self.names = [f.attname for f in _CALL_FIELDS]
        self.table = connection.ops.quote_name(ApiCall._meta.db_table)
        self.columns = ", ".join(connection.ops.quote_name(f.column) for f in _CALL_FIELDS)
        self.datetimes = {i for i, f in enumerate(_CALL_FIELDS) if f.get_internal_type() == "DateTimeField"}
        self.decimals = {i for i, f in enumerate(_CALL_FIELDS) if f.get_internal_type() == "DecimalField"}

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {self.table} ({self.columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([row[n] for n in self.names])
                return
            cursor.executemany(
                f"INSERT INTO {self.table} ({self.columns}) VALUES ({', '.join(['%s'] * len(self.names))})",
                [self.adapt([row[n] for n in self.names]) for row in rows],
            )

    def adapt(self, values: list[Any]) -> list[Any]:
        for i in self.datetimes:
            if values[i] is not None:
                values[i] = connection.ops.adapt_datetimefield_value(values[i])
        for i in self.decimals:
            if values[i] is not None:
                values[i] = str(values[i])
        return values


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([name for name, _ in table], weights=[w for _, w in table])[0]


class Command(StoppableCommand):
    help = (
        "Generate realistic demo data: users with relay keys, a period of calls over several "
        "models (one of them unpriced) with tokens and costs priced as the relay prices them, "
        "daily rollups equal to the sum of those calls, files, uploads, and batches with their "
        "results. Inserts in chunks of 5,000; a million calls take a few minutes. "
        "For trying the admin and for bench/admin_scale.py; it adds to whatever database "
        "DATABASE_URL points at, so do not run it against production."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--calls", type=int, default=10_000, help="number of API calls (default 10000)")
        parser.add_argument("--days", type=int, default=30, help="spread calls over the last DAYS days (default 30)")
        parser.add_argument("--seed", type=int, default=1, help="random seed, for reproducible data (default 1)")
        parser.add_argument("--files", type=int, default=None, help="file records (default: calls/2500, at least 6)")
        parser.add_argument("--batches", type=int, default=None, help="batches (default: calls/10000, at least 3)")
        parser.add_argument("--no-analyze", action="store_true", help="skip ANALYZE of the seeded tables at the end")

    def handle(self, *args, calls: int, days: int, seed: int, files: int | None, batches: int | None,
               no_analyze: bool, **options) -> None:
        if calls < 0 or days < 1:
            raise CommandError("--calls must be >= 0 and --days >= 1")
        self.install_stop_handlers()
        began = time.monotonic()
        rng = random.Random(seed)
        self.now = timezone.now().replace(microsecond=0)
        self.start = self.now - timedelta(days=days)
        self.check_prices()
        if connection.vendor == "sqlite":
            # Random request ids land all over their indexes: with SQLite's 2 MB default
            # page cache, a million-row run spends most of its time re-reading index pages.
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA cache_size = -262144")  # 256 MiB, this connection only
        keys = self.users_and_keys(rng)
        summary = Summary()
        self.seed_calls(rng, keys, calls, summary)
        if not self.stopping:
            n_files = files if files is not None else max(6, calls // 2500)
            n_batches = batches if batches is not None else max(3, calls // 10_000)
            self.seed_files_and_batches(rng, keys, n_files, n_batches, summary)
        if not no_analyze:
            self.analyze()
        stopped = " (stopped early)" if self.stopping else ""
        self.stdout.write(
            f"seed_demo: {summary.calls} calls over {days} days for {len(USERS)} users and {len(keys)} keys "
            f"(${summary.cost:.2f}, {summary.unpriced} unpriced), {summary.buckets} rollup updates, "
            f"{summary.files} files, {summary.uploads} uploads, {summary.batches} batches with "
            f"{summary.results} results in {time.monotonic() - began:.1f}s{stopped}"
        )

    # --- setup ------------------------------------------------------------------------

    def check_prices(self) -> None:
        priced = set(ModelPrice.objects.filter(model__in=[m for m, _ in CHAT_MODELS] + [EMBEDDING_MODEL])
                     .values_list("model", flat=True))
        if not priced:
            raise CommandError("No prices for the demo models: run migrate (it loads the shipped prices) "
                               "or import_prices first.")

    def users_and_keys(self, rng: random.Random) -> list[RelayKey]:
        User = get_user_model()
        keys: list[RelayKey] = []
        for i, name in enumerate(USERS):
            user, created = User.objects.get_or_create(
                username=name, defaults={"email": f"{name}@example.com", "first_name": name.title()})
            existing = list(RelayKey.objects.filter(owner=user).order_by("pk"))
            if not existing:
                names = ["laptop"] + (["ci"] if i % 3 == 0 else []) + (["notebook"] if i % 4 == 1 else [])
                for key_name in names:
                    key, _ = RelayKey.issue(user, name=key_name)  # the plaintext is dropped: demo keys
                    existing.append(key)
                if i == 2:  # a scoped key with a budget and a rate limit
                    scoped = existing[0]
                    scoped.allowed_families = ["responses", "embeddings"]
                    scoped.monthly_budget_usd = Decimal("50.00")
                    scoped.requests_per_minute = 120
                    scoped.save()
            keys.extend(existing)
        return keys

    # --- calls ------------------------------------------------------------------------

    def seed_calls(self, rng: random.Random, keys: list[RelayKey], total: int, summary: Summary) -> None:
        span = (self.now - self.start).total_seconds()
        owners = {k.owner_id: k.owner.get_username() for k in RelayKey.objects.select_related("owner")
                  .filter(pk__in=[k.pk for k in keys])}
        # Heavier users make more calls.
        key_weights = [1 + (len(USERS) - USERS.index(owners[k.owner_id])) ** 1.5
                       if owners[k.owner_id] in USERS else 1 for k in keys]
        insert = _RowInserter()
        done = 0
        while done < total and not self.stopping:
            size = min(CHUNK, total - done)
            rows: list[dict[str, Any]] = []
            buckets: dict[tuple, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
            stats: dict[tuple, list[int]] = {}
            for i in range(done, done + size):
                # Stratified times: ids grow with started_at, as they do in production.
                at = self.start + timedelta(seconds=(i + rng.random()) / total * span)
                key = rng.choices(keys, weights=key_weights)[0]
                call = self.make_call(rng, at, key)
                call["row_mac"] = call_mac(call)
                rows.append(call)
                if call["key_id"] is not None:
                    self.add_to_bucket(buckets, call)
                self.add_to_stats(stats, call)
                if call["cost"] is not None:
                    summary.cost += call["cost"]
                summary.unpriced += call["unpriced"]
            with transaction.atomic():
                insert(rows)
                for (day_at, user_id, key_id, model, family), counters in buckets.items():
                    rollups.add(started_at=day_at, user_id=user_id, key_id=key_id, model=model, family=family,
                                **counters)
                latency.bulk_add((*k, *v) for k, v in stats.items())
            summary.buckets += len(buckets)
            done += size
            summary.calls = done
            if done % 50_000 == 0 or done == total:
                self.progress(f"  {done}/{total} calls")

    def add_to_stats(self, stats: dict, call: dict[str, Any]) -> None:
        """The call in its errors-and-latency row (audit_app.latency), summed per chunk."""
        values = latency.stat_values(
            started_at=call["started_at"], model=call["model"], family=call["family"], user_id=call["user_id"],
            key_id=call["key_id"], outcome=call["outcome"], status=call["status"],
            duration_ms=call["duration_ms"], ttfb_ms=call["ttfb_ms"])
        key, counts = tuple(values[:7]), values[7:]
        if key in stats:
            stats[key] = [a + b for a, b in zip(stats[key], counts)]
        else:
            stats[key] = counts

    def add_to_bucket(self, buckets: dict, call: dict[str, Any]) -> None:
        day = rollups.bucket_date(call["started_at"])
        # rollups.add takes a datetime and buckets it by local date; noon of that day does.
        bucket = buckets[(timezone.make_aware(datetime.combine(day, datetime.min.time().replace(hour=12))),
                          call["user_id"], call["key_id"], call["model"], call["family"])]
        bucket["calls"] += 1
        bucket["unpriced"] += 1 if call["unpriced"] else 0
        for name in ROLLUP_COUNTERS:
            value = call[name]
            if value:
                bucket[name] += value

    def make_call(self, rng: random.Random, at: datetime, key: RelayKey) -> dict[str, Any]:
        """One finished call's column values (attnames), as the relay would have written them."""
        family = _weighted(rng, FAMILIES)
        stream = family in ("responses", "chat") and rng.random() < 0.4
        method, path, model = "POST", f"/v1/{family}", ""
        if family == "chat":
            path = "/v1/chat/completions"
        if family in ("responses", "chat"):
            model = _weighted(rng, CHAT_MODELS)
        elif family == "embeddings":
            model = EMBEDDING_MODEL
        elif family == "models":
            method, path = "GET", "/v1/models"
        elif family == "files":
            if rng.random() < 0.5:
                method, path = "GET", f"/v1/files/file-{rng.getrandbits(80):020x}"
        elif family == "batches" and rng.random() < 0.6:
            method, path = "GET", f"/v1/batches/batch_{rng.getrandbits(96):024x}"
        duration = round(rng.lognormvariate(6.5 if model else 4.5, 0.8), 3)
        call = {
            **_CALL_DEFAULTS,
            "started_at": at, "finished_at": at + timedelta(milliseconds=duration), "duration_ms": duration,
            "key_id": key.pk, "user_id": key.owner_id, "method": method, "path": path, "family": family,
            "model": model, "stream": stream, "relay_request_id": f"{rng.getrandbits(128):032x}",
            "client_ip": f"10.{key.owner_id % 250}.{rng.randint(0, 3)}.{rng.randint(2, 250)}",
            "user_agent": AGENTS[(key.pk + rng.randint(0, 1)) % len(AGENTS)],
            "bytes_in": rng.randint(200, 6000), "bytes_out": rng.randint(300, 20000),
        }
        roll = rng.random()
        if roll < 0.003:  # no or unknown key: rejected before anyone is known
            call.update(key_id=None, user_id=None, status=401, outcome=Outcome.REJECTED.value,
                        error="Invalid relay key.", bytes_out=180)
            return call
        if roll < 0.012:
            status = rng.choice([403, 429])
            call.update(status=status, outcome=Outcome.REJECTED.value,
                        error="Over the key's monthly budget." if status == 429 else "Outside the key's scope.")
            return call
        call["upstream_request_id"] = f"req_{rng.getrandbits(128):032x}"
        if roll < 0.035:
            status = rng.choice([400, 429, 500, 503])
            call.update(upstream_status=status, status=status, outcome=Outcome.UPSTREAM_ERROR.value,
                        error=f"upstream answered {status}", ttfb_ms=round(duration * 0.97, 3))
            return call
        # First byte: a stream's first event comes early; a whole JSON answer near the end.
        call["ttfb_ms"] = round(duration * (rng.uniform(0.05, 0.3) if stream else rng.uniform(0.85, 0.99)), 3)
        call.update(upstream_status=200, status=200,
                    outcome=(Outcome.CLIENT_CLOSED if stream and roll < 0.045 else Outcome.OK).value)
        if model:
            fields = priced_fields(self.usage(rng, model, family), model, at)
            price = fields.pop("price", None)
            call.update(fields, price_id=price.pk if price is not None else None)
        return call

    def usage(self, rng: random.Random, model: str, family: str) -> Usage:
        if family == "embeddings":
            tokens = int(rng.lognormvariate(5.0, 1.0)) + 1
            return Usage(input_tokens=tokens, total_tokens=tokens)
        prompt = int(rng.lognormvariate(6.8, 1.0)) + 10
        cached = (prompt // 128) * 128 if rng.random() < 0.3 else 0
        output = int(rng.lognormvariate(5.5, 0.9)) + 1
        reasoning = int(output * rng.uniform(0.3, 0.8)) if model in REASONING else 0
        return Usage(input_tokens=prompt, cached_input_tokens=cached, output_tokens=output,
                     reasoning_tokens=reasoning, total_tokens=prompt + output)

    # --- files, uploads, batches ----------------------------------------------------------

    def seed_files_and_batches(self, rng: random.Random, keys: list[RelayKey], n_files: int, n_batches: int,
                               summary: Summary) -> None:
        # Files hang off real seeded calls that uploaded them, when there are some.
        uploads = list(ApiCall.objects.filter(family="files", method="POST", outcome=Outcome.OK,
                                              started_at__gte=self.start).order_by("started_at")
                       .select_related("key")[:n_files + n_batches])
        with transaction.atomic():
            files = [self.make_file(rng, keys, uploads[i] if i < len(uploads) else None, i,
                                    purpose="batch" if i < n_batches else rng.choice(
                                        ["assistants", "user_data", "fine-tune", "vision"]))
                     for i in range(n_files + n_batches)]
            FileRecord.objects.bulk_create(files, batch_size=1000)
            summary.files += len(files)
            upload_rows = [
                UploadRecord(upload_id=f"upload_{rng.getrandbits(96):024x}", filename=f.filename,
                             purpose=f.purpose, bytes=f.bytes, mime_type="application/jsonl", status="completed",
                             parts=rng.randint(1, 8), file=f, created_by_id=f.created_by_id,
                             created_by_key_id=f.created_by_key_id, created_at=f.created_at,
                             completed_at=f.created_at, first_seen_at=f.first_seen_at)
                for f in files[n_batches::10]
            ]
            UploadRecord.objects.bulk_create(upload_rows)
            summary.uploads += len(upload_rows)
        for i in range(n_batches):
            if self.stopping:
                break
            with transaction.atomic():
                self.make_batch(rng, files[i], summary)
            summary.batches += 1

    def make_file(self, rng: random.Random, keys: list[RelayKey], call: ApiCall | None, i: int,
                  purpose: str) -> FileRecord:
        if call is not None:
            at, user_id, key_id, call_id = call.started_at, call.user_id, call.key_id, call.pk
        else:
            key = rng.choice(keys)
            at = self.start + timedelta(seconds=rng.uniform(0, (self.now - self.start).total_seconds()))
            user_id, key_id, call_id = key.owner_id, key.pk, None
        ext = "jsonl" if purpose in ("batch", "fine-tune") else rng.choice(["pdf", "md", "csv", "png"])
        return FileRecord(
            file_id=f"file-{rng.getrandbits(110):028x}", filename=f"{purpose}-{i:05d}.{ext}", purpose=purpose,
            bytes=rng.randint(2_000, 50_000_000), status="processed", origin=FileOrigin.FILES_API,
            created_by_id=user_id, created_by_key_id=key_id, call_id=call_id, created_at=at, first_seen_at=at,
            expires_at=at + timedelta(days=30) if purpose == "batch" else None,
        )

    def make_batch(self, rng: random.Random, input_file: FileRecord, summary: Summary) -> None:
        created = input_file.created_at + timedelta(seconds=rng.randint(5, 600))
        status = rng.choices([BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED,
                              BatchStatus.IN_PROGRESS, BatchStatus.CANCELLED], weights=[80, 5, 5, 6, 4])[0]
        endpoint = rng.choice(["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
        model = EMBEDDING_MODEL if endpoint == "/v1/embeddings" else _weighted(rng, CHAT_MODELS[:-1])
        total = rng.randint(20, 200)
        batch = BatchRecord.objects.create(
            batch_id=f"batch_{rng.getrandbits(120):030x}", endpoint=endpoint, completion_window="24h",
            input_file=input_file, status=status, request_total=total, created_by_id=input_file.created_by_id,
            created_by_key_id=input_file.created_by_key_id, created_at=created, first_seen_at=created,
            expires_at=created + timedelta(hours=24), metadata={"project": rng.choice(["support", "search", "eval"])},
        )
        if status == BatchStatus.FAILED:
            batch.failed_at = created + timedelta(minutes=1)
            batch.errors = {"data": [{"code": "invalid_request", "message": "line 3: model is not supported"}]}
            batch.request_total = 0
            batch.save()
            return
        finished = created + timedelta(minutes=rng.randint(10, 600))
        done_count = total if status == BatchStatus.COMPLETED else rng.randint(0, total)
        results = []
        for n in range(done_count):
            failed = rng.random() < 0.03
            result = BatchResult(batch=batch, custom_id=f"request-{n + 1}",
                                 request_id=f"req_{rng.getrandbits(128):032x}", model=model,
                                 status_code=400 if failed else 200, from_error_file=failed)
            if failed:
                result.error_code, result.error_message = rng.choice(BATCH_ERRORS)
            else:
                family = "embeddings" if endpoint == "/v1/embeddings" else "chat"
                usage = self.usage(rng, model, family)
                # Most models have no batch rate for cached input (a result with some is unpriced).
                usage.cached_input_tokens = 0 if usage.cached_input_tokens is not None else None
                fields = priced_fields(usage, model, created, batch=True)
                fields.pop("price", None)
                for name, value in fields.items():
                    setattr(result, name, value)
            results.append(result)
        BatchResult.objects.bulk_create(results, batch_size=1000)
        ok = [r for r in results if not r.from_error_file]
        batch.request_completed, batch.request_failed = len(ok), len(results) - len(ok)
        for name in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens"):
            setattr(batch, name, sum(getattr(r, name) or 0 for r in ok))
        costs = [r.cost for r in ok if r.cost is not None]
        batch.unpriced_results = sum(1 for r in ok if r.unpriced)
        # As batch_records.count_results: any unpriced result makes the batch's cost unknown.
        batch.cost = sum(costs, Decimal(0)) if costs and not batch.unpriced_results else None
        batch.results_counted_at = finished if results else None
        batch.in_progress_at = created + timedelta(minutes=1)
        if status == BatchStatus.COMPLETED:
            batch.finalizing_at, batch.completed_at = finished - timedelta(minutes=1), finished
            batch.output_file = self.result_file(rng, batch, FileOrigin.BATCH_OUTPUT, "batch_output", finished)
            if batch.request_failed:
                batch.error_file = self.result_file(rng, batch, FileOrigin.BATCH_ERROR, "batch_output", finished)
        elif status == BatchStatus.EXPIRED:
            batch.expired_at = created + timedelta(hours=24)
        elif status == BatchStatus.CANCELLED:
            batch.cancelling_at, batch.cancelled_at = finished - timedelta(minutes=1), finished
        batch.last_polled_at = finished
        batch.save()
        summary.results += len(results)

    def result_file(self, rng: random.Random, batch: BatchRecord, origin: str, purpose: str,
                    at: datetime) -> FileRecord:
        kind = "output" if origin == FileOrigin.BATCH_OUTPUT else "errors"
        return FileRecord.objects.create(
            file_id=f"file-{rng.getrandbits(110):028x}", filename=f"{batch.batch_id}_{kind}.jsonl",
            purpose=purpose, bytes=rng.randint(10_000, 5_000_000), status="processed", origin=origin,
            batch=batch, created_by_id=batch.created_by_id, created_by_key_id=batch.created_by_key_id,
            created_at=at, first_seen_at=at,
        )

    def analyze(self) -> None:
        """Fresh planner statistics: without them a just-filled table can get poor plans."""
        tables = [m._meta.db_table for m in (ApiCall, FileRecord, BatchRecord, BatchResult, UploadRecord)]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {', '.join(tables)}, audit_app_usagedaily")
            elif connection.vendor == "sqlite":
                cursor.execute("ANALYZE")
