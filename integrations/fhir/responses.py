"""HTTP answers of the FHIR API: ``application/fhir+json``, ETag/Location/Last-Modified, Prefer,
and Bundles assembled around stored JSON without parsing it again (FHIR R4 http.html, bundle.html).
"""

from __future__ import annotations

import email.utils
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import Response

from clinic.db import utcnow
from clinic.fhirstore.service import CREATE, StoredResource, instant
from integrations.fhir.outcome import FhirError, bad_request, informational

FHIR_JSON = "application/fhir+json"


class Return(StrEnum):
    """``Prefer: return=`` (http.html §3.1.0.5.2)."""

    REPRESENTATION = "representation"
    MINIMAL = "minimal"
    OPERATION_OUTCOME = "OperationOutcome"


@dataclass(frozen=True)
class Preferences:
    returns: Return = Return.REPRESENTATION
    lenient: bool = False


def preferences(header: str | None) -> Preferences:
    """The ``Prefer`` header: ``return=...`` and ``handling=strict|lenient`` (search)."""
    returns, lenient = Return.REPRESENTATION, False
    for part in (header or "").split(","):
        for token in part.split(";"):
            key, _, value = token.strip().partition("=")
            value = value.strip().strip('"')
            if key == "return" and value in Return.__members__.values():
                returns = Return(value)
            elif key == "handling":
                lenient = value == "lenient"
    return Preferences(returns, lenient)


def etag(version: int) -> str:
    return f'W/"{version}"'


def parse_etag(header: str | None) -> int | None:
    """The version in an ``If-Match`` header (``W/"3"`` or ``"3"``); 400 when it is not one."""
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise bad_request('If-Match must be a version ETag such as W/"3"')
    return int(text)


def fhir_response(body: bytes | str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def error_response(exc: FhirError) -> Response:
    return fhir_response(exc.body(), exc.status, dict(exc.headers))


def resource_headers(base: str, resource: StoredResource) -> dict[str, str]:
    return {
        "ETag": etag(resource.version_id),
        "Last-Modified": email.utils.format_datetime(resource.last_updated, usegmt=True),
        "Location": f"{base}/{resource.resource_type}/{resource.logical_id}/_history/{resource.version_id}",
    }


def written_response(base: str, resource: StoredResource, status: int, returns: Return) -> Response:
    """The answer to a create or update, shaped by ``Prefer: return``."""
    headers = resource_headers(base, resource)
    if returns is Return.MINIMAL:
        return Response(status_code=status, headers=headers)
    if returns is Return.OPERATION_OUTCOME:
        outcome = informational(
            f"{resource.resource_type}/{resource.logical_id} version {resource.version_id}"
        )
        return fhir_response(json.dumps(outcome), status, headers)
    return fhir_response(resource.content, status, headers)


def status_line(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def splice(entry: dict[str, Any], content: str | None) -> str:
    """The entry as JSON with the stored resource's JSON text put in as ``resource``."""
    text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    if content is None:
        return text
    return text[:-1] + ("," if entry else "") + '"resource":' + content + "}"


def bundle_text(head: dict[str, Any], entries: Iterable[str]) -> str:
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    return text[:-1] + ',"entry":[' + ",".join(entries) + "]}"


def _bundle_head(kind: str, total: int | None, links: list[dict[str, str]]) -> dict[str, Any]:
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(utcnow())},
        "type": kind,
    }
    if total is not None:
        head["total"] = total
    if links:
        head["link"] = links
    return head


def _paging_links(
    url: str, params: Sequence[tuple[str, str]], offset: int, count: int, has_more: bool
) -> list[dict[str, str]]:
    kept = [(k, v) for k, v in params if k not in ("_offset", "_count")]

    def link(relation: str, at: int) -> dict[str, str]:
        return {
            "relation": relation,
            "url": f"{url}?{urlencode([*kept, ('_count', str(count)), ('_offset', str(at))])}",
        }

    links = [link("self", offset)]
    if has_more:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    return links


def searchset(
    base: str,
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    matches: Sequence[StoredResource],
    included: Sequence[StoredResource],
    total: int | None,
    offset: int,
    count: int,
    has_more: bool,
) -> str:
    """A ``searchset`` Bundle with self/next/previous links (search.html §3.1.1.6)."""
    head = _bundle_head(
        "searchset", total, _paging_links(f"{base}/{resource_type}", params, offset, count, has_more)
    )
    entries = [
        splice({"fullUrl": f"{base}/{r.resource_type}/{r.logical_id}", "search": {"mode": mode}}, r.content)
        for mode, group in (("match", matches), ("include", included))
        for r in group
    ]
    return bundle_text(head, entries)


def history_bundle(
    base: str,
    url: str,
    params: Sequence[tuple[str, str]],
    versions: Sequence[StoredResource],
    *,
    total: int,
    offset: int,
    count: int,
) -> str:
    """A ``history`` Bundle, newest first (http.html §3.1.0.11)."""
    head = _bundle_head("history", total, _paging_links(url, params, offset, count, offset + count < total))
    entries = []
    for v in versions:
        created = v.method == CREATE
        entry = {
            "fullUrl": f"{base}/{v.resource_type}/{v.logical_id}",
            "request": {
                "method": v.method,
                "url": v.resource_type if created else f"{v.resource_type}/{v.logical_id}",
            },
            "response": {
                "status": status_line(201 if created else 200),
                "etag": etag(v.version_id),
                "lastModified": instant(v.last_updated),
            },
        }
        entries.append(splice(entry, v.content))
    return bundle_text(head, entries)
