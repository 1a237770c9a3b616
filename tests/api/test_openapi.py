"""The OpenAPI document at /api/v1/openapi.json: valid OpenAPI 3.1, the same routes and scopes as the
code, and schemathesis driving every operation of the live app without a server error."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twilio_support import TWILIO_SID, TWILIO_TOKEN, ingest_twilio

from callrec.api import openapi
from callrec.api.auth import SCOPES
from callrec.app import create_app, worker_key
from callrec.appkeys import db_key
from callrec.db import recordings, tokens

API = "/api/v1"
DOC_PATH = f"{API}/openapi.json"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every route under /api/v1; HEAD is aiohttp's automatic companion of GET."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        # aiohttp's canonical form is already OpenAPI's: /api/v1/recordings/{id}
        path = resource.canonical
        if path == API or path.startswith(API + "/"):
            found.add((route.method, path))
    return found


def document_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def build_app(config: Any) -> Any:
    app = create_app(config, run_workers=False)
    if ("GET", DOC_PATH) not in app_routes(app):  # until the route is registered in callrec.app
        app.router.add_get(DOC_PATH, openapi.openapi_json)
    return app


@pytest.fixture
def api_config(app_config: Any, fake_twilio: Any) -> Any:
    return app_config(
        tenants={
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "twilio_api_base": fake_twilio.base,
                "webhook_secret": "pbx-shared-secret-for-tests",
                "callback_hosts": ["127.0.0.1"],
            },
            "other": {"webhook_secret": "x"},
        }
    )


@pytest.fixture
async def api(aiohttp_client: Any, api_config: Any) -> Any:
    return await aiohttp_client(build_app(api_config))


async def bearer(client: Any, scopes: list[str], tenant: str = "acme") -> dict[str, str]:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant=tenant, name="openapi-test", scopes=scopes)
    return {"Authorization": f"Bearer {token}"}


def all_scopes() -> list[str]:
    named = {
        scope
        for op in document_operations(openapi.DOCUMENT).values()
        for requirement in op.get("security", [])
        for scopes in requirement.values()
        for scope in scopes
    }
    return sorted(named | set(SCOPES))


# --- the document itself ---------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    doc = openapi.document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)
    schemas = doc["components"]["schemas"]
    for name in ("Recording", "LegalHold", "DeletionRequest", "DeletionOutcome", "Certificate", "Error"):
        assert name in schemas


def test_every_operation_documents_security_and_errors() -> None:
    doc = openapi.document()
    operation_ids = []
    for (method, path), op in document_operations(doc).items():
        operation_ids.append(op["operationId"])
        assert "security" in op, f"{method} {path} states no security"
        responses = op["responses"]
        assert any(code.startswith("2") for code in responses), f"{method} {path}: no success response"
        if op["security"]:
            (requirement,) = op["security"]
            (scopes,) = requirement.values()
            assert len(scopes) == 1, f"{method} {path}: one scope per operation"
            assert {"401", "403"} <= set(responses), f"{method} {path}: 401/403 undocumented"
        for code, response in responses.items():
            if code[0] in "45":
                assert response == {"$ref": response["$ref"]}
                name = response["$ref"].rsplit("/", 1)[1]
                content = doc["components"]["responses"][name]["content"]
                assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert len(operation_ids) == len(set(operation_ids))


def test_every_scope_in_the_document_is_a_known_scope() -> None:
    """A scope named in the document and unknown to `callrec token create` would be unobtainable."""
    named = set(all_scopes()) - set(SCOPES)
    assert not named, f"scopes in the document but not in callrec.api.auth.SCOPES: {sorted(named)}"


async def test_the_document_is_served_without_a_token(api: Any) -> None:
    resp = await api.get(DOC_PATH)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == openapi.DOCUMENT


# --- checked against the code ----------------------------------------------------------------------


async def test_document_and_router_have_the_same_routes(api_config: Any) -> None:
    app = build_app(api_config)
    in_app = app_routes(app)
    in_doc = set(document_operations(openapi.DOCUMENT))
    assert in_app - in_doc == set(), "routes the document does not describe"
    assert in_doc - in_app == set(), "operations the document describes but the app does not route"


async def test_scopes_in_the_document_are_the_scopes_the_code_checks(api: Any) -> None:
    """Without its documented scope an operation answers 403 insufficient_scope; with that scope alone it
    gets past authentication; without a token it answers 401. Public operations need no token."""
    everything = all_scopes()
    for (method, path), op in sorted(document_operations(openapi.DOCUMENT).items()):
        url = path.replace("{id}", str(uuid.uuid4()))
        if not op["security"]:
            resp = await api.request(method, url, params={"token": "x"} if "{id}" in path else None)
            assert resp.status not in (401, 403), (method, path, resp.status)
            continue
        (scope,) = op["security"][0][openapi.SECURITY_SCHEME]
        resp = await api.request(method, url)
        assert resp.status == 401, (method, path, resp.status)
        assert (await resp.json())["error"]["code"] == "unauthorized"
        lacking = await bearer(api, [s for s in everything if s != scope])
        resp = await api.request(method, url, headers=lacking)
        assert resp.status == 403, (method, path, resp.status)
        assert (await resp.json())["error"]["code"] == "insufficient_scope", (method, path)
        only = await bearer(api, [scope])
        resp = await api.request(method, url, headers=only)
        assert resp.status not in (401, 403, 500), (method, path, resp.status, await resp.text())


# --- schemathesis against the live app -------------------------------------------------------------


async def drain(client: Any) -> None:
    for _ in range(50):
        if not await client.app[worker_key].run_once():
            return


async def quarantined(client: Any) -> uuid.UUID:
    now = datetime.now(UTC)
    rec = recordings.Recording(
        id=uuid.uuid4(),
        tenant="acme",
        provider="twilio",
        call_id="CA" + uuid.uuid4().hex,
        provider_recording_id="RE" + uuid.uuid4().hex,
        state="quarantined",
        started_at=None,
        stored_at=now,
        expires_at=now + timedelta(days=7),
        duration_ms=1000,
        channels=1,
        sample_rate=8000,
        format="wav",
        codec="pcm_s16le",
        size_bytes=16000,
        sha256="0" * 64,
        object_key=None,
        object_version=None,
        ciphertext_bytes=None,
        wrapped_key=None,
        direction="inbound",
        from_sealed=None,
        to_sealed=None,
        from_hash=None,
        to_hash=None,
        consent={"state": "unknown"},
    )
    async with client.app[db_key].acquire() as conn:
        assert await recordings.insert(conn, rec)
    return rec.id


@dataclass
class Seeded:
    """Things that exist, so that generated requests reach past the 404s: for a path prefix, the
    path parameters (and query) to try besides generated ones."""

    fixed: dict[str, list[tuple[dict[str, str], dict[str, str] | None]]] = field(default_factory=dict)

    def for_path(self, path: str) -> list[tuple[dict[str, str], dict[str, str] | None]]:
        for prefix, fixed in self.fixed.items():
            if path.startswith(prefix):
                return fixed
        return []


@pytest.fixture
async def seeded(api: Any, fake_twilio: Any, audio_fixtures: Path) -> Seeded:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    held = await ingest_twilio(api, fake_twilio, audio, drain=True)
    erased = await ingest_twilio(api, fake_twilio, audio, drain=True)
    auth = await bearer(api, all_scopes())
    hold = await api.post(
        f"{API}/legal-holds",
        json={"matter": "Matter 1", "reason": "litigation", "scope": {"recording_ids": [str(held)]}},
        headers=auth,
    )
    assert hold.status == 201, await hold.text()
    deletion = await api.post(
        f"{API}/deletion-requests",
        json={"subject": {"recording_ids": [str(held), str(erased)]}, "reason": "Art. 17"},
        headers=auth,
    )
    assert deletion.status == 202, await deletion.text()
    await drain(api)  # decided: one deleted, one withheld by the hold
    outcome = await (
        await api.get(f"{API}/deletion-requests/{(await deletion.json())['id']}", headers=auth)
    ).json()
    assert sorted(o["outcome"] for o in outcome["outcomes"]) == ["deleted", "withheld_legal_hold"]
    access = await api.post(
        f"{API}/access-requests", json={"subject": {"recording_ids": [str(held)]}}, headers=auth
    )
    assert access.status == 201, await access.text()
    link = await access.json()
    token = link["download_url"].rsplit("token=", 1)[1]

    def ids(*values: Any) -> list[tuple[dict[str, str], dict[str, str] | None]]:
        return [({"id": str(v)}, None) for v in values]

    return Seeded(
        {
            f"{API}/recordings/{{id}}/approve": ids(await quarantined(api)),
            f"{API}/recordings/{{id}}/reject": ids(await quarantined(api)),
            f"{API}/recordings/": ids(held, erased),
            f"{API}/legal-holds/": ids((await hold.json())["id"]),
            f"{API}/deletion-requests/": ids((await deletion.json())["id"]),
            f"{API}/access-requests/": [({"id": link["id"]}, {"token": token})],
        }
    )


@dataclass
class Finding:
    operation: str
    mode: str
    message: str


@dataclass
class Run:
    findings: list[Finding] = field(default_factory=list)
    # operation label -> status -> count
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(sum(counts.values()) for counts in self.statuses.values())


def run_schemathesis(
    base_url: str,
    token: str,
    seeded: Seeded,
    *,
    operations: set[tuple[str, str]],
    max_examples: int,
) -> Run:
    """Every documented operation the app routes, in positive and negative mode, with generated path
    ids and with ids that exist; failures are collected (not raised) so that one run reports them all
    and Hypothesis does not spend the time budget shrinking."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    conformance = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    run = Run()
    session = requests.Session()

    def fuzz(op: Any, mode: Any, path: dict[str, str] | None, query: dict[str, str] | None) -> None:
        checks = [*conformance, negative_data_rejection] if mode.is_negative else conformance
        counts = run.statuses.setdefault(op.label, {})

        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode, path_parameters=path, query=query))
        def one(case: Any) -> None:
            try:
                response = case.call_and_validate(
                    base_url=base_url, session=session, checks=checks, timeout=30
                )
                status = response.status_code
            except FailureGroup as exc:
                finding = Finding(op.label, mode.value, str(exc))
                if finding not in run.findings:
                    run.findings.append(finding)
                status = -1
            counts[status] = counts.get(status, 0) + 1

        try:
            one()
        except Unsatisfiable:
            # Negative mode with nothing left to make invalid (no parameters, or all of them fixed).
            if not mode.is_negative:
                raise

    config = schemathesis.Config.from_dict(
        {"auth": {"openapi": {openapi.SECURITY_SCHEME: {"bearer": token}}}}
    )
    schema = schemathesis.openapi.from_dict(openapi.document(), config=config)
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in operations:
            continue
        fixed: list[tuple[dict[str, str] | None, dict[str, str] | None]] = [(None, None)]
        fixed += seeded.for_path(op.path) if "{id}" in op.path else []
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            for path, query in fixed:
                fuzz(op, mode, path, query)
    return run


async def test_schemathesis_finds_no_server_error_and_responses_match_the_document(
    api: Any, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    base_url = str(api.make_url("")).rstrip("/")
    assert base_url.startswith("http://127.0.0.1:")
    token = (await bearer(api, all_scopes()))["Authorization"].removeprefix("Bearer ")
    operations = set(document_operations(openapi.DOCUMENT)) & app_routes(api.app)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="callrec.app"):
        run = await asyncio.to_thread(
            run_schemathesis, base_url, token, seeded, operations=operations, max_examples=20
        )
    elapsed = time.monotonic() - started
    summary = "\n".join(
        f"{label}: {dict(sorted(counts.items()))}" for label, counts in sorted(run.statuses.items())
    )
    print(f"schemathesis: {run.calls} requests in {elapsed:.1f}s\n{summary}")
    formatter = logging.Formatter()
    server_log = "\n".join(formatter.format(r) for r in caplog.records if r.levelno >= logging.ERROR)
    report = "\n\n".join(f"{f.operation} [{f.mode}]\n{f.message}" for f in run.findings[:20])
    assert not run.findings, (
        f"{len(run.findings)} failing cases:\n\n{report}\n\nserver log:\n{server_log[:20000]}"
    )
    # Generation reached the handlers' real work: every operation answered 2xx at least once.
    assert len(run.statuses) == len(operations)
    never_ok = sorted(
        label for label, counts in run.statuses.items() if not any(200 <= s < 300 for s in counts)
    )
    assert not never_ok, f"operations never answered 2xx:\n{summary}"


# --- hostile strings: what generation seldom hits ----------------------------------------------------

HOSTILE_STRINGS = {"NUL": "a\x00b", "lone surrogate": "a\ud800b"}
# Valid ISO 8601 with an offset, but outside what PostgreSQL (and Python in UTC) can hold.
HOSTILE_TIMES = {
    "year 1 east of UTC": "0001-01-01T00:00:00+05:00",
    "year 9999 west": "9999-12-31T23:59:59-05:00",
}
HOSTILE_INTEGERS = {"superscript two": "\u00b2", "Arabic-Indic seven": "\u0667"}
SCOPE = {
    "call_ids": ["CA1"],
    "agent": "agent-1",
    "from": "2026-01-01T00:00:00+00:00",
    "to": "2027-01-01T00:00:00+00:00",
}
# A valid body for every operation that takes one; each string in it is then made hostile in turn.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", f"{API}/recordings/search"): {
        "call_id": "CA1",
        "phone": "+442071234567",
        "agent": "agent-1",
        "from": "2026-01-01T00:00:00+00:00",
        "to": "2027-01-01T00:00:00+00:00",
        "state": "stored",
        "limit": 10,
    },
    ("POST", f"{API}/recordings/{{id}}/approve"): {"reason": "reviewed"},
    ("POST", f"{API}/recordings/{{id}}/reject"): {"reason": "reviewed"},
    ("POST", f"{API}/recordings/{{id}}/restrict"): {"reason": "Art. 18 request"},
    ("POST", f"{API}/recordings/{{id}}/unrestrict"): {"reason": "Art. 18 request"},
    ("POST", f"{API}/legal-holds"): {"matter": "M", "reason": "R", "review_at": "2027-01-01", "scope": SCOPE},
    ("POST", f"{API}/legal-holds/preview"): {"scope": SCOPE},
    ("POST", f"{API}/legal-holds/{{id}}/release"): {"reason": "settled"},
    ("POST", f"{API}/deletion-requests"): {
        "subject": {"call_id": "CA1"},
        "reason": "Art. 17",
        "external_ref": "T-1",
        "callback_url": "http://127.0.0.1/hook",
    },
    ("POST", f"{API}/access-requests"): {"subject": {"call_id": "CA1"}},
}


def string_leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in string_leaves(v, (*path, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in string_leaves(v, (*path, i))]
    return []


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


def hostile_variants(name: str) -> dict[str, str]:
    variants = dict(HOSTILE_STRINGS)
    if name in ("from", "to"):
        variants.update(HOSTILE_TIMES)
    return variants


def test_every_operation_with_a_body_has_a_hostile_body() -> None:
    with_body = {key for key, op in document_operations(openapi.DOCUMENT).items() if "requestBody" in op}
    assert with_body == set(BODIES)


async def test_hostile_strings_are_a_client_error(api: Any, seeded: Seeded) -> None:
    """Rule 7 (bad input gets a clear 4xx and changes nothing) for inputs random generation seldom makes:
    NUL characters and lone surrogates (PostgreSQL text cannot hold them), times whose UTC value is out of
    range, and Unicode digits that str.isdigit accepts but int() does not. Query parameters come from the
    document; bodies from BODIES."""
    auth = await bearer(api, all_scopes())
    ids = {prefix: fixed[0][0]["id"] for prefix, fixed in seeded.fixed.items()}
    server_errors = []

    def url_for(path: str) -> str:
        for prefix, value in ids.items():
            if path.startswith(prefix):
                return path.replace("{id}", value)
        return path.replace("{id}", str(uuid.uuid4()))

    async def send(method: str, path: str, what: str, **kwargs: Any) -> None:
        headers = {**auth, **kwargs.pop("headers", {})}
        resp = await api.request(method, url_for(path), headers=headers, **kwargs)
        if resp.status >= 500:
            server_errors.append(f"{resp.status} {method} {path} {what}: {(await resp.text())[:200]}")

    for (method, path), op in sorted(document_operations(openapi.DOCUMENT).items()):
        for param in op.get("parameters", []):
            if param["in"] != "query" or param["name"] == "token":
                continue
            schema = param["schema"]
            if schema.get("type") == "integer":
                variants = dict(HOSTILE_INTEGERS)
            elif schema.get("format") == "date-time":
                variants = {**HOSTILE_STRINGS, **HOSTILE_TIMES}
            else:
                variants = dict(HOSTILE_STRINGS)
            variants.pop("lone surrogate", None)  # a URL cannot carry one
            for label, value in variants.items():
                await send(
                    method, path, f"query {param['name']}={value!r} ({label})", params={param["name"]: value}
                )
        body = BODIES.get((method, path))
        for leaf, _ in string_leaves(body):
            for label, value in hostile_variants(str(leaf[-1])).items():
                data = json.dumps(replaced(body, leaf, value))  # ensure_ascii: a lone surrogate as \ud800
                await send(
                    method,
                    path,
                    f"body {'.'.join(map(str, leaf))}={value!r} ({label})",
                    data=data,
                    headers={"Content-Type": "application/json"},
                )
    assert not server_errors, f"{len(server_errors)} server errors:\n" + "\n".join(server_errors)


async def test_deeply_nested_bodies_are_a_client_error(api: Any, seeded: Seeded) -> None:
    """A body of a hundred thousand "[" made the json module exhaust the stack (RecursionError, a 500);
    nesting that parses but is deeper than any body callrec takes is refused as well."""
    auth = await bearer(api, all_scopes())
    nested_object = '{"scope": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}"
    bodies = {
        "unclosed arrays": "[" * 100_000,
        "closed arrays": "[" * 5000 + "]" * 5000,
        "objects": nested_object,
    }
    answers = []
    for method, path in sorted(BODIES):
        for label, body in bodies.items():
            resp = await api.request(
                method,
                path.replace("{id}", str(uuid.uuid4())),
                headers={**auth, "Content-Type": "application/json"},
                data=body,
            )
            answers.append((method, path, label, resp.status, (await resp.json())["error"]["code"]))
    # 404 for an operation on an id that does not exist; 413 where a body's own cap is lower.
    expected = {(400, "invalid_body"), (404, "not_found"), (413, "payload_too_large")}
    wrong = [a for a in answers if a[3:] not in expected]
    assert not wrong, wrong
    assert sum(a[3] == 400 for a in answers) >= len(bodies) * 5, answers


def test_no_documented_query_parameter_takes_a_phone_number() -> None:
    """URLs are written to the access logs of proxies and load balancers (DESIGN rule 3): a phone number
    travels in a body (POST /recordings/search), never in a query string."""
    e164 = openapi.E164["pattern"]
    in_query = [
        (method, path, param["name"])
        for (method, path), op in document_operations(openapi.DOCUMENT).items()
        for param in op.get("parameters", [])
        if param["in"] == "query"
        and (param["name"] in ("phone", "phones") or param["schema"].get("pattern") == e164)
    ]
    assert in_query == []
    search = openapi.DOCUMENT["paths"][f"{API}/recordings/search"]["post"]
    body = openapi.DOCUMENT["components"]["schemas"]["RecordingSearch"]
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecordingSearch")
    assert body["properties"]["phone"]["pattern"] == e164
