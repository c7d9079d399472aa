"""Crawl speed and crash safety against the fake marketplace (no network beyond 127.0.0.1).

Three measurements, each a real `fashion-tagger crawl vinted` subprocess against
`fashion_tagger.testing.fake_marketplace` (answers delayed by --latency, 20 ms by default):

1. polite: the default politeness (--delay 1.0 --concurrency 2) on a small market;
2. fast: --delay 0 --concurrency 8 on a larger one;
3. kills: the fast crawl SIGKILLed --kills times at random moments, resumed each time, then run
   to the end: requests made more than once (goal 0), listings lost or duplicated (goal 0);
   the network helper (`wire.py`) finishes what a killed crawl had in flight.

Listings/s counts the listings that reached the dataset (with their photo), photos/s the photos
stored, both over the crawl's own wall time (the CLI's start-up excluded).

4. projection (#22): the default politeness (API 1 s x 2, photos their own per-host budget) on
   a market whose API answers in --api-latency and whose image CDN in --photo-latency; the
   search-page and photo rates it measures project the author's full crawl (491 leaf
   categories x 300 listings) in hours, beside the one-limiter arithmetic of before.

Example: python benchmarks/crawl_bench.py --latency 0.02 --kills 5
         python benchmarks/crawl_bench.py --skip-polite --skip-fast --skip-kills \\
             --api-latency 0.3 --photo-latency 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.testing.fake_marketplace import FakeVinted

CLI = [sys.executable, "-c", "from fashion_tagger.cli import main; main()"]


FULL_LEAVES, FULL_PER_LEAF, PAGE_SIZE = 491, 300, 96
"""The author's crawl, and the site's page size."""


def _cmd(
    fake: FakeVinted, out: Path, per_category: int, delay: float | None, concurrency: int | None
) -> list[str]:
    """The CLI call; `delay`/`concurrency` None leave every politeness option at its default."""
    cmd = [
        *CLI, "crawl", "vinted", "--base-url", fake.url, "--out", str(out),
        "--per-category", str(per_category), "--allow-private-hosts", "--no-progress", "--json",
    ]  # fmt: skip
    if delay is not None:
        cmd += ["--delay", str(delay), "--photo-delay", str(delay)]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency), "--photo-concurrency", str(concurrency)]
    return cmd


def _expected(fake: FakeVinted, per_category: int) -> set[str]:
    return {str(i) for leaf in fake.fashion_leaves() for i in leaf.items[:per_category]}


def speed(args: argparse.Namespace, categories: int, items: int, delay: float, conc: int) -> dict:
    """One full crawl; its rates."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeVinted(categories=categories, items_per_category=items, latency=args.latency) as fake,
    ):
        out = Path(tmp) / "ds"
        proc = subprocess.run(_cmd(fake, out, items, delay, conc), capture_output=True, check=True)
        result = json.loads(proc.stdout)
        listings = len(set(Dataset.open(out).to_pandas().item_id))
        secs = result["seconds"]
        return {
            "delay": delay,
            "concurrency": conc,
            "requests": result["requests"],
            "listings": listings,
            "photos": result["photos"],
            "seconds": secs,
            "listings_per_s": round(listings / secs, 1),
            "photos_per_s": round(result["photos"] / secs, 1),
            "requests_per_s": round(result["requests"] / secs, 1),
        }


def kills(args: argparse.Namespace) -> dict:
    """SIGKILL the fast crawl `args.kills` times at random moments, then let it finish."""
    rng = random.Random(args.seed)
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeVinted(
            categories=args.categories,
            items_per_category=args.items,
            latency=args.latency,
            page_cap=24,
        ) as fake,
    ):
        out = Path(tmp) / "ds"
        cmd = _cmd(fake, out, args.items, 0.0, args.kill_concurrency)
        killed_at = []
        for _ in range(args.kills):
            before = sum(fake.hits.values())
            wait_for = rng.randint(5, 150)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while sum(fake.hits.values()) < before + wait_for and proc.poll() is None:
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed_at.append(sum(fake.hits.values()))
            proc.wait()
        last = subprocess.run(cmd, capture_output=True)
        if last.returncode != 0:
            sys.exit(f"the resumed crawl failed: {last.stderr.decode()}")
        hits = Counter(fake.hits)
        df = Dataset.open(out).to_pandas()
        want = _expected(fake, args.items)
        got = list(df.item_id)

        def repeats(prefix: str) -> int:
            return sum(v - 1 for k, v in hits.items() if k.startswith(prefix))

        return {
            "concurrency": args.kill_concurrency,
            "kills": len(killed_at),
            "killed_after_requests": killed_at,
            "repeated_page_requests": repeats("/api/"),
            # answers a killed run's network helper finished and journaled (the last run's own
            # count; the runs killed after their resume took theirs with them)
            "replayed_by_last_run": json.loads(last.stdout)["replayed"],
            "repeated_photo_requests": repeats("/t/"),
            "home_page_requests": hits["/"],
            "listings_lost": len(want - set(got)),
            "listings_duplicated": len(got) - len(set(got)),
            "listings": len(set(got)),
        }


def projection(args: argparse.Namespace) -> dict:
    """The default politeness at realistic latencies, projected to 491 leaves x 300 listings."""
    from fashion_tagger.sources.vinted import Politeness

    p = Politeness()
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeVinted(
            categories=args.projection_categories,
            items_per_category=args.projection_items,
            latency=args.api_latency,
            photo_latency=args.photo_latency,
        ) as fake,
    ):
        out = Path(tmp) / "ds"
        cmd = _cmd(fake, out, args.projection_items, None, None)
        result = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
    page_rate = result["pages"] / result["listing_seconds"]
    photo_rate = result["photos"] / result["photo_seconds"]
    pages = FULL_LEAVES * math.ceil(FULL_PER_LEAF / PAGE_SIZE)
    photos = FULL_LEAVES * FULL_PER_LEAF
    hours = (pages / page_rate + photos / photo_rate) / 3600
    # before #22: one limiter (1 s between starts, 2 in flight) for search pages and photos
    one_limiter = max(p.delay, max(args.api_latency, args.photo_latency) / p.concurrency)
    return {
        "api_latency": args.api_latency,
        "photo_latency": args.photo_latency,
        "api": f"--delay {p.delay:g} --concurrency {p.concurrency}",
        "photos": f"--photo-delay {p.photo_delay:g} --photo-concurrency {p.photo_concurrency}",
        "measured_pages": result["pages"],
        "measured_photos": result["photos"],
        "pages_per_s": round(page_rate, 2),
        "photos_per_s": round(photo_rate, 2),
        "full_crawl_pages": pages,
        "full_crawl_photos": photos,
        "projected_hours": round(hours, 2),
        "one_limiter_hours": round((pages + photos) * one_limiter / 3600, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.02, help="fake server delay (s)")
    parser.add_argument("--categories", type=int, default=10, help="fashion leaves (fast/kills)")
    parser.add_argument("--items", type=int, default=100, help="listings per leaf (fast/kills)")
    parser.add_argument("--polite-categories", type=int, default=2)
    parser.add_argument("--polite-items", type=int, default=10)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-concurrency", type=int, default=8)
    parser.add_argument("--skip-polite", action="store_true")
    parser.add_argument("--skip-fast", action="store_true")
    parser.add_argument("--skip-kills", action="store_true")
    parser.add_argument("--skip-projection", action="store_true")
    parser.add_argument("--api-latency", type=float, default=0.3, help="projection: API (s)")
    parser.add_argument("--photo-latency", type=float, default=0.1, help="projection: CDN (s)")
    parser.add_argument("--projection-categories", type=int, default=4)
    parser.add_argument("--projection-items", type=int, default=100)
    args = parser.parse_args()
    report = {}
    if not args.skip_polite:
        report["polite"] = speed(args, args.polite_categories, args.polite_items, 1.0, 2)
        print(json.dumps(report["polite"]), flush=True)
    if not args.skip_fast:
        report["fast"] = speed(args, args.categories, args.items, 0.0, 8)
        print(json.dumps(report["fast"]), flush=True)
    if not args.skip_kills:
        report["kills"] = kills(args)
        print(json.dumps(report["kills"]), flush=True)
    if not args.skip_projection:
        report["projection"] = projection(args)
        print(json.dumps(report["projection"]), flush=True)


if __name__ == "__main__":
    main()
