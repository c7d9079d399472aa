"""Service metrics in the Prometheus text format, written by hand (no extra dependency).

Counters and histograms live in one `Metrics` object per app; `render()` gives the text that
`GET /metrics` returns. Routes are labelled by their template (`/v1/predict`), never the raw URL,
so a scanner cannot blow up the number of series.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative buckets, sum and count, one set per label value."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, value: float) -> None:
        self.counts[label][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[label] += value


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    """What the service counts; thread-safe, since batches finish in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.images = 0
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.batches = Histogram(BATCH_BUCKETS)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency.observe(route, seconds)

    def predicted(self, n: int) -> None:
        with self._lock:
            self.images += n

    def error(self, route: str, reason: str) -> None:
        with self._lock:
            self.errors[(route, reason)] += 1

    def batch(self, n: int) -> None:
        with self._lock:
            self.batches.observe("", float(n))

    def render(self) -> str:
        """The Prometheus text exposition format, version 0.0.4."""
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP fashion_tagger_requests_total HTTP requests by route, method and status.",
                "# TYPE fashion_tagger_requests_total counter",
            ]
            for (route, method, status), n in sorted(self.requests.items()):
                lab = _labels(route=route, method=method, status=str(status))
                out.append(f"fashion_tagger_requests_total{lab} {n}")
            out += self._histogram(
                "fashion_tagger_request_duration_seconds",
                "Request latency in seconds by route.",
                self.latency,
                "route",
            )
            out += [
                "# HELP fashion_tagger_images_total Images classified.",
                "# TYPE fashion_tagger_images_total counter",
                f"fashion_tagger_images_total {self.images}",
                "# HELP fashion_tagger_errors_total Requests refused or failed, by route and reason.",
                "# TYPE fashion_tagger_errors_total counter",
            ]
            for (route, reason), n in sorted(self.errors.items()):
                out.append(f"fashion_tagger_errors_total{_labels(route=route, reason=reason)} {n}")
            out += self._histogram(
                "fashion_tagger_batch_size", "Images per model call.", self.batches, None
            )
        return "\n".join(out) + "\n"

    @staticmethod
    def _histogram(name: str, help_: str, h: Histogram, label: str | None) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        for key in sorted(h.counts):
            base = {label: key} if label else {}
            cumulative = 0
            for bound, count in zip((*h.buckets, float("inf")), h.counts[key], strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else _num(bound)
                out.append(f"{name}_bucket{_labels(**base, le=le)} {cumulative}")
            out.append(f"{name}_sum{_labels(**base)} {_num(h.sums[key])}")
            out.append(f"{name}_count{_labels(**base)} {cumulative}")
        return out
