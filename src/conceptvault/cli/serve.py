"""Serving vaults: the server, its users and their grants."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ConceptVaultError
from .common import (
    DeviceOption,
    PassphraseOption,
    ThreadsOption,
    app,
    as_text,
    check_positive,
    check_range,
    console,
    read_passphrase,
    say,
    use_threads,
)

MAX_QUEUE = 10_000
MAX_BATCH = 256
MAX_RATE = 60_000.0  # a thousand a second: beyond it the limit means nothing


@app.command("serve")
def serve_command(
    vaults: Annotated[list[Path], typer.Argument(help="Vault folders to serve (each with its keys).")],
    db: Annotated[str, typer.Option(help="Grants database: a SQLite file, or a SQLAlchemy URL (postgresql://...).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (1 to 65535).")] = 8000,
    queue: Annotated[
        int, typer.Option(help=f"Requests that may wait (at most {MAX_QUEUE}); more are refused with 429.")
    ] = 32,
    max_batch: Annotated[int, typer.Option(help=f"Images generated in one pipeline call (at most {MAX_BATCH}).")] = 8,
    rate: Annotated[float, typer.Option(help=f"Requests per minute per user (above 0, at most {MAX_RATE:g}).")] = 60.0,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Serve vaults over HTTP: the public model to every user, a key only with a live grant (docs at /docs)."""
    use_threads(threads)
    import uvicorn

    from ..serve import Limits, build_server

    check_positive(port=port, queue=queue, max_batch=max_batch)
    check_range("port", port, 1, 65535)
    check_range("queue", queue, 1, MAX_QUEUE)
    check_range("max_batch", max_batch, 1, MAX_BATCH)
    check_range("rate", rate, 0, MAX_RATE, above=True)
    passphrase = read_passphrase(passphrase_file) or os.environ.get("CONCEPTVAULT_PASSPHRASE") or None
    app_, engine = build_server(
        vaults,
        db,
        passphrase=passphrase,
        device=device,
        queue_size=queue,
        max_batch=max_batch,
        limits=Limits(rate_per_minute=rate),
    )
    say(f"serving {', '.join(v.name for v in vaults)} on http://{host}:{port} (API docs at /docs)")
    try:
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    finally:
        engine.stop()


users_app = typer.Typer(help="The users of a served vault, and their tokens.", no_args_is_help=True)
grants_app = typer.Typer(help="Who may switch on which key of which served vault, until when.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(grants_app, name="grants")
DbOption = Annotated[str, typer.Option(help="The grants database (SQLite file or SQLAlchemy URL).")]


@contextmanager
def _store(db: str):
    """The grants database, open; a database that fails on the way (a damaged file) is one line, its URL's
    password masked."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..serve.store import AccessStore

    store = AccessStore(db)
    try:
        yield store
    except SQLAlchemyError as error:
        raise ConceptVaultError(
            f"the database '{store.url}' failed ({type(error).__name__}); check that it is a ConceptVault "
            "grants database and not damaged."
        ) from None


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    db: DbOption,
    admin: Annotated[bool, typer.Option(help="May add and revoke grants.")] = False,
) -> None:
    """Add a user and print their token (shown this once; only its hash is stored)."""
    with _store(db) as store:
        token = store.add_user(name, admin=admin)
    say(f"added {name}{' (administrator)' if admin else ''}; token (shown once): {token}")


@users_app.command("list")
def users_list(db: DbOption) -> None:
    """List the users."""
    with _store(db) as store:
        users = store.users()
    for user in users:
        say(f"{user['name']}{'  admin' if user['admin'] else ''}  since {user['created']}")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="The user's name.")], db: DbOption) -> None:
    """Remove a user and their grants (the audit log keeps their requests)."""
    with _store(db) as store:
        store.remove_user(name)
    say(f"removed {name}")


@grants_app.command("add")
def grants_add(
    user: Annotated[str, typer.Argument(help="Who.")],
    vault: Annotated[
        Path,
        typer.Argument(help="The vault folder: the grant binds to its public fingerprint, not to its folder name."),
    ],
    concept: Annotated[str, typer.Argument(help="The concept whose key they may switch on.")],
    db: DbOption,
    days: Annotated[float | None, typer.Option(help="Days until the grant expires (default: never).")] = None,
) -> None:
    """Let USER switch on CONCEPT's key of VAULT (that vault only: another one served under its name gets nothing)."""
    from ..serve.store import check_days
    from ..vault import read_manifest

    try:
        check_days(days)
    except ConceptVaultError as error:
        raise ConceptVaultError(f"--{error}") from None
    manifest = read_manifest(vault)
    keyed = [entry.name for entry in manifest.concepts if entry.key_fingerprint is not None]
    if concept not in keyed:
        which = f"its keys are {', '.join(map(repr, keyed))}" if keyed else f"it was made by {manifest.method}"
        raise ConceptVaultError(f"the vault '{vault}' has no key for {concept!r}; {which}.")
    with _store(db) as store:
        grant_id = store.grant(user, vault.name, concept, days, fingerprint=manifest.public_fingerprint)
    say(
        f"grant {grant_id}: {user} may unlock {concept!r} of {vault.name} "
        f"(public fingerprint {manifest.public_fingerprint[:16]})" + (f" for {days:g} days" if days else "")
    )


@grants_app.command("revoke")
def grants_revoke(
    grant_id: Annotated[int, typer.Argument(help="The grant's id (see grants list).")], db: DbOption
) -> None:
    """Revoke a grant at once."""
    with _store(db) as store:
        store.revoke(grant_id)
    say(f"revoked grant {grant_id}")


@grants_app.command("list")
def grants_list(db: DbOption, user: Annotated[str | None, typer.Option(help="Only this user's.")] = None) -> None:
    """List grants, live or not."""
    table = Table(title="grants")
    for column in ("id", "user", "vault", "fingerprint", "concept", "expires", "state"):
        table.add_column(column)
    with _store(db) as store:
        grants = store.grants(user)
    for g in grants:
        if g["revoked"]:
            state = "revoked"
        elif g["fingerprint"] is None:
            state = "unbound: grant again"  # made before grants named the vault's fingerprint; matches no vault
        else:
            state = "live" if g["live"] else "expired"
        fingerprint = (g["fingerprint"] or "-")[:16]
        table.add_row(
            *map(as_text, (g["id"], g["user"], g["vault"], fingerprint, g["concept"], g["expires"] or "never", state))
        )
    console.print(table)
