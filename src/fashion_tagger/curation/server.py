"""`fashion-tagger review DATASET_DIR`: the review page, served, with its decisions kept on disk.

The static page keeps a reviewer's decisions in the browser's localStorage, which a profile
reset, another machine or a busy browser's reload loses. Served, the same page loads and saves
every decision through this API, and each one is in the dataset dir's journal
(`curation.journal`, fsynced) before the request answers:

- `GET /`: the review page of the dataset dir's `label_issues.parquet`;
- `POST /api/decisions` `{"image": ..., "decision": "accept" | "reject" | null}`: store one
  (404 when no row of the issues file has that image, 422 for a malformed body);
- `GET /api/decisions`: `{"decisions": [...]}`, the latest per image, in the decisions-file
  format (`dataset relabel --decisions` reads this answer as it is).

It listens on 127.0.0.1 and answers only requests addressed to the host it listens on (a web
page elsewhere cannot rebind a name to it); JSON bodies only, so no cross-site form posts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fashion_tagger.curation import review
from fashion_tagger.curation.journal import Decision, Journal
from fashion_tagger.dataset.core import Dataset


class DecisionIn(BaseModel):
    """One decision as the page posts it."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, max_length=4096)
    decision: Literal["accept", "reject"] | None


@dataclass(frozen=True)
class Row:
    """What a decision on one image keeps: its item and the two paths."""

    item_id: str
    given: tuple[str, ...]
    suggested: tuple[str, ...]


def _rows(issues: Any) -> dict[str, Row]:
    """Every row of the issues file by image (the first, when an image is listed twice)."""
    out: dict[str, Row] = {}
    for r in review.as_rows(issues):
        image = str(r.get("image") or "")
        if image and image not in out:
            out[image] = Row(
                str(r.get("item_id") or ""),
                tuple(review.as_path(r.get("given"))),
                tuple(review.as_path(r.get("suggested"))),
            )
    return out


def _one_line(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable sentence, as `serve`'s API answers (not FastAPI's list of dicts)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def create_app(
    dataset_dir: str | Path,
    *,
    only_issues: bool = True,
    max_rows: int = review.MAX_ROWS,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> FastAPI:
    """The review server of one dataset dir. The page is built here, once (thumbnails take a
    moment), so a missing issues file fails before the server listens.

    Args:
        hosts: the Host header values answered (the address it listens on).
    """
    ds = Dataset.open(dataset_dir)
    issues = review.read_issues(dataset_dir)
    rows = _rows(issues)
    data = review.page_data(ds, issues, only_issues=only_issues, max_rows=max_rows)
    page = review.render_page(data | {"server": True})
    journal = Journal(ds.root)
    journal.compact()  # a crash's torn line goes; the journal starts at its latest decisions

    app = FastAPI(title="fashion-tagger review", docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    app.add_exception_handler(RequestValidationError, _one_line)  # type: ignore[arg-type]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/decisions")
    def get_decisions() -> dict[str, list[dict[str, Any]]]:
        """The latest decision per image, oldest first."""
        return {"decisions": [d.to_dict() for d in journal.latest().values()]}

    @app.post("/api/decisions")
    def post_decision(body: DecisionIn) -> dict[str, Any]:
        """Store one decision durably, then answer with it as stored."""
        row = rows.get(body.image)
        if row is None:
            raise HTTPException(
                404,
                f"no row of {review.ISSUES_FILE} has image {body.image!r}; "
                "reload the page (was the audit re-run?)",
            )
        labels = None
        if body.decision is not None:
            labels = row.suggested if body.decision == "accept" else row.given
        decision = Decision(body.image, body.decision, row.item_id or None, labels)
        (stored,) = journal.append(decision)
        return stored.to_dict()

    return app
