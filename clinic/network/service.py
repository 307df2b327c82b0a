"""Remote AEs: add, change, remove, and the questions the listeners and tasks ask of them.

The caller owns the transaction (STYLE.md): nothing here commits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.audit import service as audit
from clinic.db import utcnow
from clinic.network.models import RemoteAE

#: PS3.5 §6.2 (AE value representation): 16 characters of the default repertoire, no backslash or
#: control characters; leading and trailing spaces are not significant.
AE_TITLE_MAX = 16
RETRIEVE_METHODS = ("move", "get")


class NetworkError(Exception):
    """Base of the network slice's errors."""


class InvalidAETitleError(NetworkError, ValueError):
    def __init__(self, title: str, reason: str) -> None:
        super().__init__(f"invalid AE title {title!r}: {reason}")
        self.title = title


class UnknownAEError(NetworkError, KeyError):
    def __init__(self, title: str) -> None:
        super().__init__(f"no remote AE titled {title!r}")
        self.title = title

    def __str__(self) -> str:
        return str(self.args[0])


class AEExistsError(NetworkError, ValueError):
    def __init__(self, title: str) -> None:
        super().__init__(f"a remote AE titled {title!r} already exists")
        self.title = title


def normalise_ae_title(title: str) -> str:
    """The AE title as compared and stored; raises :class:`InvalidAETitleError` when it is not one."""
    value = title.strip()
    if not value:
        raise InvalidAETitleError(title, "empty")
    if len(value) > AE_TITLE_MAX:
        raise InvalidAETitleError(title, f"longer than {AE_TITLE_MAX} characters")
    if "\\" in value or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in value):
        raise InvalidAETitleError(title, "backslash, control or non-ASCII character")
    return value


@dataclass(frozen=True)
class AEIn:
    ae_title: str
    host: str
    port: int
    description: str = ""
    may_store: bool = True
    receives_results: bool = False
    query_priors: bool = False
    retrieve_method: str = "move"
    enabled: bool = True


def to_ae_in(ae: RemoteAE) -> AEIn:
    """The stored AE as the value :func:`update_ae` takes (to change a few fields of it)."""
    return AEIn(**{f.name: getattr(ae, f.name) for f in fields(AEIn)})


def with_changes(ae: RemoteAE, **changes: Any) -> AEIn:
    """The stored AE with *changes* applied; a change of ``None`` keeps the stored value."""
    unknown = set(changes) - {f.name for f in fields(AEIn)}
    if unknown:
        raise NetworkError(f"unknown AE field(s): {', '.join(sorted(unknown))}")
    return replace(to_ae_in(ae), **{k: v for k, v in changes.items() if v is not None})


def describe_changes(before: AEIn | None, after: AEIn | None) -> str:
    """``field: old -> new`` for the audit trail (AE settings hold no patient data)."""
    if after is None:
        return "removed"
    if before is None:
        return ", ".join(f"{k}={v}" for k, v in asdict(after).items())
    old, new = asdict(before), asdict(after)
    return ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in new if old[k] != new[k]) or "no change"


def audit_change(
    session: Session,
    *,
    username: str,
    role: str,
    action: str,
    ae_title: str,
    detail: str,
    client: str = "",
) -> None:
    """An audit row for a change of the AE configuration (who may store, where results go)."""
    audit.record(
        session,
        username=username,
        role=role,
        action=action,
        resource_type="remote-ae",
        resource_id=ae_title,
        client=client,
        detail=detail,
    )


def _check(ae_in: AEIn) -> None:
    if not ae_in.host.strip():
        raise NetworkError("host is empty")
    if not 1 <= ae_in.port <= 65535:
        raise NetworkError(f"port {ae_in.port} is not in 1-65535")
    if ae_in.retrieve_method not in RETRIEVE_METHODS:
        raise NetworkError(f"retrieve method must be one of {', '.join(RETRIEVE_METHODS)}")


def find_ae(session: Session, title: str) -> RemoteAE | None:
    return session.scalars(select(RemoteAE).where(RemoteAE.ae_title == title.strip())).one_or_none()


def get_ae(session: Session, title: str) -> RemoteAE:
    ae = find_ae(session, title)
    if ae is None:
        raise UnknownAEError(title.strip())
    return ae


def list_aes(session: Session) -> list[RemoteAE]:
    return list(session.scalars(select(RemoteAE).order_by(RemoteAE.ae_title)))


def add_ae(session: Session, ae_in: AEIn) -> RemoteAE:
    title = normalise_ae_title(ae_in.ae_title)
    _check(ae_in)
    if find_ae(session, title) is not None:
        raise AEExistsError(title)
    ae = RemoteAE(
        ae_title=title,
        host=ae_in.host.strip(),
        port=ae_in.port,
        description=ae_in.description,
        enabled=ae_in.enabled,
        may_store=ae_in.may_store,
        receives_results=ae_in.receives_results,
        query_priors=ae_in.query_priors,
        retrieve_method=ae_in.retrieve_method,
    )
    session.add(ae)
    session.flush()
    return ae


def update_ae(session: Session, title: str, ae_in: AEIn) -> RemoteAE:
    ae = get_ae(session, title)
    new_title = normalise_ae_title(ae_in.ae_title)
    _check(ae_in)
    if new_title != ae.ae_title and find_ae(session, new_title) is not None:
        raise AEExistsError(new_title)
    ae.ae_title = new_title
    ae.host = ae_in.host.strip()
    ae.port = ae_in.port
    ae.description = ae_in.description
    ae.enabled = ae_in.enabled
    ae.may_store = ae_in.may_store
    ae.receives_results = ae_in.receives_results
    ae.query_priors = ae_in.query_priors
    ae.retrieve_method = ae_in.retrieve_method
    ae.updated_at = utcnow()
    session.flush()
    return ae


def remove_ae(session: Session, title: str) -> None:
    """Disable rather than delete when deliveries refer to it (their history stays readable)."""
    ae = get_ae(session, title)
    from clinic.results.models import Delivery  # noqa: PLC0415 (slices stay independent at import)

    if session.scalars(select(Delivery.id).where(Delivery.remote_ae_id == ae.id).limit(1)).first():
        ae.enabled = False
        ae.receives_results = False
        ae.may_store = False
        ae.query_priors = False
        ae.updated_at = utcnow()
    else:
        session.delete(ae)
    session.flush()


def store_allowed(session: Session, calling_ae: str) -> bool:
    """Whether *calling_ae* may store to us when the allow-list is on."""
    ae = find_ae(session, calling_ae)
    return ae is not None and ae.enabled and ae.may_store


def allowed_calling_aes(session: Session) -> frozenset[str]:
    """Every AE title that may store to us when the allow-list is on (one query, for a cache)."""
    query = select(RemoteAE.ae_title).where(RemoteAE.enabled, RemoteAE.may_store)
    return frozenset(session.scalars(query))


def result_destinations(session: Session) -> list[RemoteAE]:
    """The enabled AEs that receive our AI result objects."""
    query = select(RemoteAE).where(RemoteAE.enabled, RemoteAE.receives_results).order_by(RemoteAE.id)
    return list(session.scalars(query))


def prior_sources(session: Session) -> list[RemoteAE]:
    """The enabled PACS we query for priors, in the order they were added."""
    query = select(RemoteAE).where(RemoteAE.enabled, RemoteAE.query_priors).order_by(RemoteAE.id)
    return list(session.scalars(query))
