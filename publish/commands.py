"""``icedamage publish``: the command line of the Zenodo publisher.

The token comes from the environment (ZENODO_TOKEN, or ZENODO_SANDBOX_TOKEN with --sandbox) or
from the config file zenodo-client reads (``~/.config/zenodo.ini``, section ``[zenodo]`` or
``[zenodo:sandbox]``, key ``api_token``); never from the command line, and it is never printed,
logged or saved. ICEDAMAGE_ZENODO_TIME_SCALE shrinks every backoff wait (tests) and
ICEDAMAGE_ZENODO_ATTEMPTS sets how often a request is tried (unset: the defaults; a value that
is not a number is an error). ``--url`` is normalised (scheme and host lower-cased, no trailing
slash, ``www.zenodo.org`` is zenodo.org); demo products are refused whenever it names the
production zenodo.org.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from publish.metadata import MetadataError
from publish.release import PublishOptions, PublishRefused, PublishStopped, publish_release
from publish.zenodo import (
    PRODUCTION_URL,
    SANDBOX_URL,
    RateLimiter,
    RetryPolicy,
    ZenodoClient,
    ZenodoError,
    is_production,
    normalise_base_url,
)


class TokenMissing(RuntimeError):
    """No token in the environment or the config file."""


def resolve_token(sandbox: bool) -> str:
    """The API token for production or the sandbox (custom URLs use ZENODO_TOKEN)."""
    variable = "ZENODO_SANDBOX_TOKEN" if sandbox else "ZENODO_TOKEN"
    token = os.environ.get(variable, "").strip()
    if token:
        return token
    import pystow

    module = "zenodo:sandbox" if sandbox else "zenodo"
    token = (pystow.get_config(module, "api_token") or "").strip()
    if token:
        return token
    raise TokenMissing(f"no Zenodo token: set {variable} or put api_token under [{module}] in "
                       "~/.config/zenodo.ini (never on the command line)")


class SettingError(ValueError):
    """An environment setting of the publisher holds a value it cannot use."""


def _env_number(name: str, default: float, kind: type[int] | type[float],
                minimum: float) -> float:
    """A number from the environment (the default when unset or blank); SettingError names
    the variable and the rule when the value is not a number of that kind and size."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value >= minimum or value != value:  # NaN fails both
        what = "a whole number" if kind is int else "a number"
        raise SettingError(f"{name}={text!r}: expected {what} of at least {minimum:g} "
                           f"(unset it for the default {default:g})")
    return value


def retry_from_env() -> RetryPolicy:
    """Backoff settings, scaled by ICEDAMAGE_ZENODO_TIME_SCALE (tests use a tiny scale), tries
    from ICEDAMAGE_ZENODO_ATTEMPTS; unset or blank means the default, garbage is an error."""
    policy = RetryPolicy()
    policy.time_scale = float(_env_number("ICEDAMAGE_ZENODO_TIME_SCALE", 1.0, float, 0))
    policy.attempts = int(_env_number("ICEDAMAGE_ZENODO_ATTEMPTS", policy.attempts, int, 1))
    return policy


def base_url_of(url: str | None, sandbox: bool) -> str:
    """The normalised base URL the command talks to (see ``normalise_base_url``)."""
    if url is None:
        return SANDBOX_URL if sandbox else PRODUCTION_URL
    return normalise_base_url(url)


def publish_command(
    release_dir: Annotated[Path, typer.Argument(help="Release folder (validated).", exists=True,
                                                file_okay=False, resolve_path=True)],
    version: Annotated[str, typer.Option("--version", help="Version string of this release.")],
    concept_id: Annotated[str | None, typer.Option(
        "--concept-id", help="Concept record id: publish a new version.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Create a new record.")] = False,
    sandbox: Annotated[bool, typer.Option("--sandbox", help="Use sandbox.zenodo.org.")] = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="Base URL of another Zenodo instance.")] = None,
    metadata: Annotated[Path | None, typer.Option(
        "--metadata", exists=True, dir_okay=False,
        help="release.yaml (default: the one in the release).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan; change nothing.")] = False,
    no_publish: Annotated[bool, typer.Option(
        "--no-publish", help="Stop at a verified draft.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run.")] = False,
) -> None:
    """Publish a validated release to Zenodo as a new record or a new version."""
    console = Console(highlight=False)
    if concept_id and new:
        console.print("error: give --concept-id or --new, not both", markup=False)
        raise typer.Exit(2)
    if sandbox and url:
        console.print("error: give --sandbox or --url, not both", markup=False)
        raise typer.Exit(2)
    try:
        base_url = base_url_of(url, sandbox)
    except ValueError as exc:
        console.print(f"error: --url: {exc}", markup=False)
        raise typer.Exit(2) from None
    try:
        token = resolve_token(sandbox)
        policy = retry_from_env()
    except (TokenMissing, SettingError) as exc:
        console.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    client = ZenodoClient(base_url, token, retry=policy, limiter=RateLimiter(policy))
    # demo products may go to a sandbox or a test server, never to the production zenodo.org
    # (however its URL is spelled: the check runs on the normalised URL)
    options = PublishOptions(release_dir=release_dir, version=version, base_url=base_url,
                             concept_id=concept_id, new=new,
                             allow_demo=not is_production(base_url), metadata_path=metadata,
                             dry_run=dry_run, no_publish=no_publish, resume=resume)
    try:
        result = publish_release(options, client, console, secrets=(token,))
    except (PublishRefused, MetadataError) as exc:
        console.print(f"refused: {_redact(str(exc), token)}", markup=False)
        raise typer.Exit(2) from None
    except (PublishStopped, ZenodoError) as exc:
        console.print(f"stopped: {_redact(str(exc), token)}", markup=False)
        raise typer.Exit(1) from None
    console.print(f"done: {result.stage}", markup=False)


def _redact(text: str, token: str) -> str:
    """Belt and braces: no message ever shows the token."""
    return text.replace(token, "***") if token else text


def register(app: typer.Typer) -> None:
    """Add ``publish`` to the icedamage application."""
    app.command("publish")(publish_command)
