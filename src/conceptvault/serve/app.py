"""The HTTP service: the public model for everyone with a token, a key only for callers granted it.

``POST /v1/generate`` switches a key on for a request only when the caller asked for that concept and
holds a live grant for it; asking without one is a 403, never a silent fallback to the public model.
Every request, refused or served, is appended to the audit log; a caller without a valid token is held
to a few requests a minute per address, and its rows keep no prompt, so that it cannot grow the log
without bound. Keys live in the engine's pipelines and appear in no response, log line, error message or
metric.

Limits follow the model: an image side may be at most ``size_factor`` times the model's native side, and
one request's work (steps x images x pixels, in native images) is bounded, so that one caller cannot hold
the single worker for minutes. Every response carries a Content-Security-Policy, X-Frame-Options: DENY
and X-Content-Type-Options: nosniff.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import re
import threading
import time
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConceptVaultError
from .engine import Engine, Job, NoLongerGranted, QueueFull
from .page import PAGE
from .store import AccessStore, Caller, check_days

logger = logging.getLogger(__name__)


@dataclass
class Limits:
    max_body_bytes: int = 16 * 1024
    max_prompt_chars: int = 500
    max_seeds: int = 8
    max_steps: int = 100
    max_size: int = 1024  # an image side, whatever the model
    size_factor: float = 2.0  # an image side at most this times the model's native side
    max_work: float = 800.0  # steps x images x (pixels / native pixels) of one request: 8 native images of 100 steps
    rate_per_minute: float = 60.0  # per user, refilled continuously
    burst: int = 20
    work_per_minute: float = 3200.0  # units of work per user, refilled continuously: four maximal requests a minute
    work_burst: float = 1600.0  # at most two maximal requests at once
    anonymous_per_minute: float = 10.0  # requests without a valid token, per address
    anonymous_burst: int = 10
    timeout_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name in (
            "rate_per_minute",
            "anonymous_per_minute",
            "work_per_minute",
            "work_burst",
            "size_factor",
            "max_work",
            "timeout_seconds",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConceptVaultError(f"the server's {name} must be a finite number above 0; got {value!r}.")
        for name in ("max_body_bytes", "max_prompt_chars", "max_seeds", "max_steps", "max_size", "burst"):
            if getattr(self, name) < 1:
                raise ConceptVaultError(f"the server's {name} must be at least 1; got {getattr(self, name)!r}.")


IN_FLIGHT = "accepted, not answered yet (left so if the server stopped first)"

# request bodies are read strictly: "3" is no seed, true is no number, NaN and Infinity are no guidance
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class GenerateRequest(BaseModel):
    model_config = _STRICT

    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    vault: str | None = None  # default: the only vault served
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    concepts: list[str] = Field(default_factory=list)  # the concepts whose keys the caller wants on


class GrantRequest(BaseModel):
    model_config = _STRICT

    user: str
    vault: str
    concept: str
    days: float | None = None


@dataclass
class Served:
    """A vault the server holds: its concepts with keys, and the backbone's default sampler settings."""

    concepts: list[str]
    steps: int
    guidance: float
    size: int  # the image side the backbone makes by default
    fingerprint: str  # the vault's public fingerprint: what grants bind to


class RateLimiter:
    """A token bucket per user."""

    def __init__(self, per_minute: float, burst: int):
        self.rate, self.burst = per_minute / 60.0, burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, user: str, cost: float = 1.0) -> bool:
        """Take ``cost`` from the user's bucket if it holds that much."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(user, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < cost:
                self.buckets[user] = (tokens, now)
                return False
            self.buckets[user] = (tokens - cost, now)
            return True


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.images = 0
        self.latencies: deque[float] = deque(maxlen=2000)

    def record(self, status: int, seconds: float, images: int = 0) -> None:
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.images += images
            self.latencies.append(seconds)

    def text(self, queue_depth: int) -> str:
        with self.lock:
            lines = ["# TYPE conceptvault_requests_total counter"]
            lines += [f'conceptvault_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines += [
                "# TYPE conceptvault_images_total counter",
                f"conceptvault_images_total {self.images}",
                "# TYPE conceptvault_queue_depth gauge",
                f"conceptvault_queue_depth {queue_depth}",
                "# TYPE conceptvault_request_seconds summary",
            ]
            ordered = sorted(self.latencies)
            for q in (0.5, 0.95, 0.99):
                value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
                lines.append(f'conceptvault_request_seconds{{quantile="{q}"}} {value:.4f}')
            lines += [
                f"conceptvault_request_seconds_count {len(ordered)}",
                f"conceptvault_request_seconds_sum {sum(ordered):.4f}",
            ]
        return "\n".join(lines) + "\n"


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _hashes(pattern: str, page: str) -> str:
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii") + "'"
        for body in dict.fromkeys(re.findall(pattern, page, flags=re.S))
    )


# the page runs its own inline script and styles only (by hash), talks to this server only, shows data: images
_SCRIPTS = _hashes(r"<script>(.*?)</script>", PAGE)
_STYLES = _hashes(r"<style>(.*?)</style>", PAGE) + " " + _hashes(r' style="([^"]*)"', PAGE)
_PAGE_POLICY = (
    "default-src 'none'; "
    f"script-src {_SCRIPTS}; "
    f"style-src 'unsafe-hashes' {_STYLES}; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# FastAPI's API docs load Swagger UI and ReDoc from their CDN
_DOCS_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src blob:; connect-src 'self'; frame-ancestors 'none'"
)
_API_POLICY = "default-src 'none'; frame-ancestors 'none'"
_SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def create_app(engine: Engine, served: dict[str, Served], store: AccessStore, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    app = FastAPI(title="ConceptVault", description="Generate from hidden-concept vaults; keys only with a grant.")
    rate = RateLimiter(limits.rate_per_minute, limits.burst)
    spend = RateLimiter(limits.work_per_minute, limits.work_burst)  # per user, in units of work
    anonymous = RateLimiter(limits.anonymous_per_minute, limits.anonymous_burst)  # per address
    metrics = Metrics()
    app.state.metrics, app.state.store, app.state.engine = metrics, store, engine

    def caller_of(request: Request) -> Caller | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return store.authenticate(token.strip()) if scheme.lower() == "bearer" else None

    def refuse(
        status: int, message: str, started: float, caller: Caller | None = None, row: int | None = None, **audit
    ) -> JSONResponse:
        """Record the refusal (settling ``row``, the request's audit row written on acceptance, where there is
        one) and answer it."""
        if row is None:
            store.audit(user=caller.name if caller else None, status=status, outcome=message, **audit)
        else:
            store.settle(row, status=status, outcome=message)
        metrics.record(status, time.perf_counter() - started)
        return JSONResponse({"error": message}, status_code=status)

    def unauthenticated(request: Request, status: int, message: str) -> JSONResponse:
        """A refusal of a caller without a valid token: recorded (without prompt) while its address stays
        under its rate; beyond it a 429 that writes nothing, so that no one can grow the audit log at will."""
        address = request.client.host if request.client else "unknown"
        if not anonymous.allow(address):
            metrics.record(429, 0.0)
            return JSONResponse({"error": "too many requests without a valid token; slow down."}, status_code=429)
        store.audit(user=None, vault=None, prompt=None, status=status, outcome=message[:200])
        metrics.record(status, 0.0)
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and (
            length is None or not length.isdigit() or int(length) > limits.max_body_bytes
        ):
            message = f"the request body must state its length and be at most {limits.max_body_bytes} bytes."
            caller = caller_of(request)
            if caller is None:
                return unauthenticated(request, 413, message)
            store.audit(user=caller.name, vault=None, prompt=None, status=413, outcome=message)
            metrics.record(413, 0.0)
            return JSONResponse({"error": message}, status_code=413)
        return await call_next(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # outermost: added last
        response = await call_next(request)
        path = request.url.path
        if path == "/":
            policy = _PAGE_POLICY
        elif path in (app.docs_url, app.redoc_url, "/docs/oauth2-redirect"):
            policy = _DOCS_POLICY
        else:
            policy = _API_POLICY
        response.headers["Content-Security-Policy"] = policy
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")[:100] or "body"
        message = f"malformed request: {where}: {first.get('msg', 'invalid')}."
        caller = caller_of(request)
        if caller is None:
            return unauthenticated(request, 422, message)
        store.audit(user=caller.name, vault=None, prompt=None, status=422, outcome=message)
        metrics.record(422, 0.0)
        return JSONResponse({"error": message}, status_code=422)

    @app.post("/v1/generate")
    def generate(body: GenerateRequest, request: Request):
        started = time.perf_counter()
        caller = caller_of(request)
        audit = dict(
            vault=body.vault,
            prompt=body.prompt[: limits.max_prompt_chars],
            asked=body.concepts,
            seeds=body.seeds[: limits.max_seeds],
        )
        if caller is None:
            return unauthenticated(request, 401, "a valid bearer token is required.")
        if not rate.allow(caller.name):
            return refuse(429, "too many requests; slow down.", started, caller, **audit)
        try:
            job = _job(body, served, store, caller, limits)
        except _Refused as refused:
            return refuse(refused.status, refused.message, started, caller, **audit)
        if not spend.allow(caller.name, job.work):
            message = "you have asked for more work than your share of the server this minute; try again shortly."
            return refuse(429, message, started, caller, **audit)
        audit.update(vault=job.vault, granted=list(job.keys))
        # written on acceptance and settled at the end, so a request in flight when the server is killed has a row
        row = store.audit(user=caller.name, status=202, outcome=IN_FLIGHT, **audit)
        try:
            future = engine.submit(job)
        except QueueFull:
            return refuse(429, "the server is busy; try again shortly.", started, row=row)
        try:
            images, seconds, batched = future.result(timeout=limits.timeout_seconds)
        except NoLongerGranted:
            message = f"your grant for the vault {job.vault!r} was revoked or ran out while the request waited."
            return refuse(403, message, started, row=row)
        except FutureTimeout:
            engine.cancel(job)  # the caller gives up: a job still waiting does not run for no one
            return refuse(503, "generation took too long.", started, row=row)
        except Exception:
            return refuse(500, "generation failed.", started, row=row)
        encoded = [_png(image) for image in images]
        hashes = [hashlib.sha256(data).hexdigest() for data in encoded]
        store.settle(row, status=200, outcome="served", image_hashes=hashes)
        metrics.record(200, time.perf_counter() - started, len(images))
        return {
            "vault": job.vault,
            "unlocked": list(job.keys),
            "images": [
                {"seed": s, "png": base64.b64encode(d).decode("ascii"), "sha256": h}
                for s, d, h in zip(job.seeds, encoded, hashes, strict=True)
            ],
            "seconds": round(seconds, 3),
            "batched_with": batched - 1,
        }

    @app.get("/v1/me")
    def me(request: Request):
        caller = caller_of(request)
        if caller is None:
            return JSONResponse({"error": "a valid bearer token is required."}, status_code=401)
        vaults = {
            name: {
                "concepts": item.concepts,
                "granted": sorted(store.live_concepts(caller.name, item.fingerprint)),
                "steps": item.steps,
                "guidance": item.guidance,
                "size": item.size,
            }
            for name, item in served.items()
        }
        return {"user": caller.name, "admin": caller.admin, "vaults": vaults}

    @app.get("/v1/history")
    def history(request: Request, limit: int = 20):
        caller = caller_of(request)
        if caller is None:
            return JSONResponse({"error": "a valid bearer token is required."}, status_code=401)
        return {"history": store.history(caller.name, limit=min(max(limit, 1), 200))}

    def admin_of(request: Request) -> Caller | JSONResponse:
        caller = caller_of(request)
        if caller is None:
            return unauthenticated(request, 401, "a valid bearer token is required.")
        if not caller.admin:
            message = "this needs an administrator's token."
            store.audit(
                user=caller.name, vault=None, prompt=None, status=403, outcome=f"{message} ({request.method} admin)"
            )
            return JSONResponse({"error": message}, status_code=403)
        return caller

    def admin_answer(caller: Caller, status: int, message: str, vault: str | None = None) -> JSONResponse:
        """Record what an administrator did or was refused, and answer it."""
        store.audit(user=caller.name, vault=vault, prompt=None, status=status, outcome=message)
        return JSONResponse({"error": message}, status_code=status)

    def admin_failed(caller: Caller, what: str, vault: str | None = None) -> JSONResponse:
        """An administrator's request that failed on the server (the database): logged, recorded, a plain 500."""
        logger.exception("%s failed", what)
        try:
            store.audit(user=caller.name, vault=vault, prompt=None, status=500, outcome=f"{what} failed")
        except Exception:  # the database itself is what failed: the log line above is the record
            logger.exception("cannot record the failure in the audit log")
        metrics.record(500, 0.0)
        return JSONResponse({"error": f"{what} failed on the server; see its log."}, status_code=500)

    @app.get("/v1/admin/grants")
    def list_grants(request: Request):
        caller = admin_of(request)
        return caller if isinstance(caller, JSONResponse) else {"grants": store.grants(), "users": store.users()}

    @app.post("/v1/admin/grants")
    def add_grant(body: GrantRequest, request: Request):
        caller = admin_of(request)
        if isinstance(caller, JSONResponse):
            return caller
        if body.vault not in served or body.concept not in served[body.vault].concepts:
            message = f"no vault {body.vault!r} with a key for {body.concept!r} is served."
            return admin_answer(caller, 404, message[:300])
        try:
            check_days(body.days)
        except ConceptVaultError as error:
            return admin_answer(caller, 422, str(error), body.vault)
        try:
            grant_id = store.grant(
                body.user, body.vault, body.concept, body.days, fingerprint=served[body.vault].fingerprint
            )
        except ConceptVaultError as error:
            return admin_answer(caller, 404, str(error)[:300], body.vault)
        except Exception:
            return admin_failed(caller, "adding a grant", body.vault)
        outcome = f"granted {body.concept!r} to {body.user!r} (grant {grant_id})"
        store.audit(user=caller.name, vault=body.vault, prompt=None, status=200, outcome=outcome)
        return {"id": grant_id}

    @app.delete("/v1/admin/grants/{grant_id}")
    def revoke_grant(grant_id: int, request: Request):
        caller = admin_of(request)
        if isinstance(caller, JSONResponse):
            return caller
        try:
            store.revoke(grant_id)
        except ConceptVaultError as error:
            return admin_answer(caller, 404, str(error)[:300])
        except Exception:
            return admin_failed(caller, f"revoking grant {grant_id}")
        store.audit(user=caller.name, vault=None, prompt=None, status=200, outcome=f"revoked grant {grant_id}")
        return {"revoked": grant_id}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "vaults": sorted(served), "queue": engine.depth()}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        return metrics.text(engine.depth())

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE

    return app


def _job(body: GenerateRequest, served: dict[str, Served], store: AccessStore, caller: Caller, limits: Limits) -> Job:
    """Check the request against the limits and the caller's grants; the job to run, or _Refused."""
    if body.vault is None and len(served) != 1:
        raise _Refused(422, f"name a vault: one of {', '.join(sorted(served))}.")
    name = body.vault or next(iter(served))
    if name not in served:
        raise _Refused(404, f"no vault named {name!r} is served.")
    item = served[name]
    if len(body.prompt) > limits.max_prompt_chars or len(body.negative_prompt) > limits.max_prompt_chars:
        raise _Refused(413, f"prompts are limited to {limits.max_prompt_chars} characters.")
    if len(body.seeds) > limits.max_seeds or any(not 0 <= s < 2**63 for s in body.seeds):
        raise _Refused(422, f"give 1 to {limits.max_seeds} seeds, each from 0 to 2^63 - 1.")
    steps = body.steps if body.steps is not None else item.steps
    guidance = body.guidance if body.guidance is not None else item.guidance
    if not 1 <= steps <= limits.max_steps or not 0 <= guidance <= 30:
        raise _Refused(422, f"steps must be 1 to {limits.max_steps} and guidance 0 to 30.")
    largest = min(limits.max_size, int(item.size * limits.size_factor) // 8 * 8)
    for side in (body.height, body.width):
        if side is not None and (side % 8 or not 8 <= side <= largest):
            raise _Refused(
                422, f"height and width must be multiples of 8 up to {largest} ({item.size} is the model's own size)."
            )
    work = steps * len(body.seeds) * (body.height or item.size) * (body.width or item.size) / item.size**2
    if work > limits.max_work:
        raise _Refused(
            422,
            f"the request asks for {work:.0f} units of work (steps x images x pixels of the model's {item.size}-pixel "
            f"image); at most {limits.max_work:.0f} per request: ask for fewer steps, seeds or pixels.",
        )
    asked = list(dict.fromkeys(body.concepts))
    unknown = [c for c in asked if c not in item.concepts]
    if unknown:
        raise _Refused(404, f"the vault {name!r} has no key for {unknown[0]!r}.")
    granted = store.live_concepts(caller.name, item.fingerprint)
    missing = [c for c in asked if c not in granted]
    if missing:
        raise _Refused(403, f"you hold no live grant for {missing[0]!r} of the vault {name!r}; ask its owner for one.")

    def still_granted() -> bool:  # checked again when the job leaves the queue
        return set(asked) <= store.live_concepts(caller.name, item.fingerprint)

    return Job(
        name,
        body.prompt,
        body.negative_prompt,
        list(body.seeds),
        steps,
        guidance,
        body.height,
        body.width,
        tuple(asked),
        still_granted if asked else None,
        caller.name,
        work,
    )


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
