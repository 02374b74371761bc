"""Users, grants and the audit log of a served vault, in one SQL database (SQLite by default, PostgreSQL
for several server processes sharing one database).

A user is a name and a bearer token; only the token's SHA-256 is stored (the token itself is shown once,
when the user is added) and a presented token is compared in constant time. A grant says that a user may
switch on one concept's key of one vault until it expires or is revoked; it names the vault by its public
fingerprint (the vault's identity), so it never reaches another vault served under the same folder name.
The audit log records every request; the API only ever appends to it.

A SQLite database is created readable by its owner only (it holds every user's prompts and token hashes);
a database URL's password appears in no error line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import ConceptVaultError


class _Base(DeclarativeBase):
    pass


class User(_Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Grant(_Base):
    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    vault: Mapped[str] = mapped_column(String(128))  # the vault's folder name when granted: a label only
    concept: Mapped[str] = mapped_column(String(256))
    # the vault's public fingerprint: what the grant binds to (None: a grant made before grants were bound,
    # which matches no vault)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRecord(_Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    vault: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    asked: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of concepts asked for
    granted: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of keys switched on
    seeds: Mapped[str] = mapped_column(Text, default="[]")
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(Text)
    image_hashes: Mapped[str] = mapped_column(Text, default="[]")  # SHA-256 of each PNG returned


def _sqlite_pragmas(connection, record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time here is UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


MAX_GRANT_DAYS = 36_525  # a hundred years: longer is a typing slip, and overflows the date arithmetic
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # ASCII only: no homoglyph of another user's name
_PASSWORD = re.compile(r"([^:/@]*:)[^/@]*@")  # user:password@


def shown_url(url: str) -> str:
    """A database URL as it may be printed: its password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: mask what looks like user:password@
        return _PASSWORD.sub(r"\1***@", url)


def check_days(days: float | None) -> None:
    """A grant's lifetime: None (no expiry) or a finite number of days above 0 and at most a hundred years."""
    if days is None:
        return
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days):
        raise ConceptVaultError(f"days must be a finite number; got {days!r}.")
    if not 0 < days <= MAX_GRANT_DAYS:
        raise ConceptVaultError(f"days must be above 0 and at most {MAX_GRANT_DAYS}; got {days:g}.")


def _sqlite_file(url: str) -> str | None:
    """The file a SQLite URL opens, or None for a database that is not SQLite; an in-memory one is refused."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConceptVaultError(
            f"cannot read the database URL '{shown_url(url)}'; give a SQLite file or a URL such as "
            "postgresql+psycopg://user@host/db."
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise ConceptVaultError(
            f"the database '{shown_url(url)}' is in memory and would vanish at exit; give a SQLite file such "
            "as grants.sqlite."
        )
    return database


def _create_private(file: str) -> None:
    """Create a SQLite database file readable by its owner only (SQLite gives its -wal and -shm files the
    same mode); an existing file is left as it is."""
    if file.startswith("file:"):  # a SQLite URI filename: SQLite itself creates it
        return
    try:
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as error:
        raise ConceptVaultError(f"cannot create the database '{file}' ({error.strerror}); check the path.") from None


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool


class AccessStore:
    """The database of one server (or of several, sharing a PostgreSQL database)."""

    def __init__(self, url: str):
        if not url.strip():
            raise ConceptVaultError("the database is empty; give a SQLite file such as grants.sqlite, or a URL.")
        if "://" not in url:
            url = f"sqlite:///{url}"
        self.url = shown_url(url)
        file = _sqlite_file(url)
        options = {"connect_args": {"check_same_thread": False, "timeout": 30}} if file is not None else {}
        try:
            if file is not None:
                _create_private(file)
            self.engine = create_engine(url, pool_pre_ping=True, **options)
            if file is not None:  # write-ahead logging: readers never block the writer, a killed server loses nothing
                event.listen(self.engine, "connect", _sqlite_pragmas)
            _Base.metadata.create_all(self.engine)
            self._bind_grants_to_fingerprints()
            with self.engine.connect() as connection:  # a damaged file fails here, not on the first request
                connection.execute(select(User.id).limit(1)).all()
                connection.execute(select(Grant.id, Grant.fingerprint).limit(1)).all()
        except (SQLAlchemyError, ValueError, ImportError) as error:
            raise ConceptVaultError(
                f"cannot open the database '{self.url}' ({type(error).__name__}); check the path or URL "
                "(a SQLite file made by ConceptVault, or a database server's URL)."
            ) from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def _bind_grants_to_fingerprints(self) -> None:
        """A database made before grants named the vault's fingerprint gains the column (its grants match none)."""
        if "fingerprint" in {column["name"] for column in inspect(self.engine).get_columns("grants")}:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(text("ALTER TABLE grants ADD COLUMN fingerprint VARCHAR(64)"))
        except SQLAlchemyError:  # another server process added it at the same moment
            if "fingerprint" not in {column["name"] for column in inspect(self.engine).get_columns("grants")}:
                raise

    def session(self) -> Session:
        return self._session()

    # -- users ----------------------------------------------------------------------------------------
    def add_user(self, name: str, admin: bool = False) -> str:
        """Add a user; returns their bearer token (shown once, stored only as a hash)."""
        if not _USER_NAME.fullmatch(name):
            raise ConceptVaultError(f"a user name is 1-64 ASCII letters, digits, '-', '_' or '.'; got {name!r}.")
        token = secrets.token_urlsafe(32)
        with self.session() as session:
            taken = session.scalar(select(User.name).where(func.lower(User.name) == name.lower()))
            if taken is not None:  # Ada and ada would be two users the log and the page cannot tell apart
                raise ConceptVaultError(f"there is already a user named {taken!r}; choose a name unlike it.")
            session.add(User(name=name, token_hash=hash_token(token), admin=admin, created=_now()))
            try:
                session.commit()
            except IntegrityError:
                raise ConceptVaultError(f"there is already a user named {name!r}.") from None
        return token

    def remove_user(self, name: str) -> None:
        with self.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                raise ConceptVaultError(f"there is no user named {name!r}.")
            for grant in session.scalars(select(Grant).where(Grant.user_id == user.id)):
                session.delete(grant)
            session.delete(user)
            session.commit()

    def users(self) -> list[dict]:
        with self.session() as session:
            return [
                {"name": u.name, "admin": u.admin, "created": _aware(u.created).isoformat(timespec="seconds")}
                for u in session.scalars(select(User).order_by(User.name))
            ]

    def authenticate(self, token: str | None) -> Caller | None:
        """The user a bearer token belongs to, or None; the hash is compared in constant time."""
        if not token:
            return None
        presented = hash_token(token)
        with self.session() as session:
            user = session.scalar(select(User).where(User.token_hash == presented))
            if user is None or not hmac.compare_digest(user.token_hash, presented):
                return None
            return Caller(user.name, user.admin)

    # -- grants ---------------------------------------------------------------------------------------
    def grant(self, user: str, vault: str, concept: str, days: float | None = None, *, fingerprint: str) -> int:
        """Let ``user`` switch on ``concept``'s key of the vault whose public fingerprint is ``fingerprint``
        (``vault``, its folder name, is kept as a label)."""
        check_days(days)
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise ConceptVaultError(f"a grant names its vault by a public fingerprint (SHA-256); got {fingerprint!r}.")
        with self.session() as session:
            owner = session.scalar(select(User).where(User.name == user))
            if owner is None:
                raise ConceptVaultError(f"there is no user named {user!r}; add them first.")
            expires = _now() + timedelta(days=days) if days is not None else None
            record = Grant(
                user_id=owner.id,
                vault=vault,
                concept=concept,
                fingerprint=fingerprint,
                expires=expires,
                created=_now(),
            )
            session.add(record)
            session.commit()
            return record.id

    def revoke(self, grant_id: int) -> None:
        if isinstance(grant_id, bool) or not isinstance(grant_id, int) or not 1 <= grant_id < 2**63:
            raise ConceptVaultError(f"there is no grant {grant_id}; see grants list for the ids.")
        with self.session() as session:
            record = session.get(Grant, grant_id)
            if record is None:
                raise ConceptVaultError(f"there is no grant {grant_id}.")
            record.revoked = True
            session.commit()

    def grants(self, user: str | None = None) -> list[dict]:
        with self.session() as session:
            query = select(Grant, User.name).join(User, Grant.user_id == User.id).order_by(Grant.id)
            if user is not None:
                query = query.where(User.name == user)
            return [
                {
                    "id": g.id,
                    "user": name,
                    "vault": g.vault,
                    "fingerprint": g.fingerprint,
                    "concept": g.concept,
                    "expires": _aware(g.expires).isoformat(timespec="seconds") if g.expires else None,
                    "revoked": g.revoked,
                    "live": self._live(g),
                }
                for g, name in session.execute(query)
            ]

    @staticmethod
    def _live(grant: Grant) -> bool:
        return (
            not grant.revoked
            and grant.fingerprint is not None
            and (grant.expires is None or _aware(grant.expires) > _now())
        )

    def live_concepts(self, user: str, fingerprint: str) -> set[str]:
        """The concepts of the vault with public fingerprint ``fingerprint`` that ``user`` may switch on now."""
        return {g["concept"] for g in self.grants(user) if g["fingerprint"] == fingerprint and g["live"]}

    # -- audit ----------------------------------------------------------------------------------------
    def audit(
        self,
        *,
        user: str | None,
        vault: str | None,
        prompt: str | None,
        asked=(),
        granted=(),
        seeds=(),
        status: int,
        outcome: str,
        image_hashes=(),
    ) -> int:
        """Append one audit row; its id, for :meth:`settle` when the row records a request still in flight."""
        with self.session() as session:
            row = AuditRecord(
                time=_now(),
                user=user,
                vault=vault,
                prompt=prompt,
                asked=json.dumps(list(asked)),
                granted=json.dumps(list(granted)),
                seeds=json.dumps(list(seeds)),
                status=status,
                outcome=outcome,
                image_hashes=json.dumps(list(image_hashes)),
            )
            session.add(row)
            session.commit()
            return row.id

    def settle(self, row_id: int, *, status: int, outcome: str, image_hashes=()) -> None:
        """Record how a request written on acceptance ended (a row left unsettled: the server stopped first)."""
        with self.session() as session:
            row = session.get(AuditRecord, row_id)
            row.status, row.outcome, row.image_hashes = status, outcome, json.dumps(list(image_hashes))
            session.commit()

    def history(self, user: str | None = None, limit: int = 50) -> list[dict]:
        with self.session() as session:
            query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
            if user is not None:
                query = query.where(AuditRecord.user == user)
            return [
                {
                    "id": r.id,
                    "time": _aware(r.time).isoformat(timespec="seconds"),
                    "user": r.user,
                    "vault": r.vault,
                    "prompt": r.prompt,
                    "asked": json.loads(r.asked),
                    "granted": json.loads(r.granted),
                    "seeds": json.loads(r.seeds),
                    "status": r.status,
                    "outcome": r.outcome,
                    "image_hashes": json.loads(r.image_hashes),
                }
                for r in session.scalars(query)
            ]

    def audit_count(self) -> int:
        with self.session() as session:
            return len(session.scalars(select(AuditRecord.id)).all())
