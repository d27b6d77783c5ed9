"""``/openapi.json`` describes all ten endpoints, with request and response schemas."""

from __future__ import annotations

import httpx
import pytest

ENDPOINTS = [
    ("get", "/Health"),
    ("put", "/Auth/verify"),
    ("post", "/v1/Token"),
    ("post", "/Transaction/balancecheck"),
    ("post", "/Transaction/sellnewcard"),
    ("post", "/Transaction/reload"),
    ("post", "/Transaction/radeem"),
    ("patch", "/Transaction/changestatus"),
    ("get", "/Batch/{storeid}"),
    ("post", "/Batch/batch/{storeid}"),
]
REQUEST_FIELDS = {
    "/v1/Token": {"cardnumber", "securitycode"},
    "/Transaction/balancecheck": {"cardtoken", "encrypted"},
    "/Transaction/sellnewcard": {"cardtoken", "encrypted", "amount", "FranchiseeID", "PosRef"},
    "/Transaction/reload": {"cardtoken", "encrypted", "amount", "FranchiseeID", "PosRef"},
    "/Transaction/radeem": {"cardtoken", "amount", "FranchiseeID", "acceptpartialamount"},
    "/Transaction/changestatus": {"cardtoken", "encrypted", "status", "reason"},
    "/Batch/batch/{storeid}": {"expectedcount", "expectedamount"},
}


@pytest.fixture(scope="module")
def spec(srv):
    return httpx.get(f"{srv.url}/openapi.json").json()


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _properties(spec: dict, schema: dict) -> set[str]:
    schema = _resolve(spec, schema)
    names = set(schema.get("properties", {}))
    for part in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        names |= _properties(spec, part)
    return names


def test_openapi_documents_every_endpoint(spec):
    found = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert set(ENDPOINTS) <= found


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_has_a_response_schema(spec, method, path):
    operation = spec["paths"][path][method]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert _properties(spec, schema), "the 200 answer's fields are described"
    if path != "/Health":
        assert "401" in operation["responses"]
    if path not in ("/Health", "/Auth/verify"):  # the two that take no input
        assert "400" in operation["responses"]


@pytest.mark.parametrize("path", sorted(REQUEST_FIELDS))
def test_every_body_has_a_request_schema(spec, path):
    (operation,) = spec["paths"][path].values()
    request_body = operation["requestBody"]
    assert request_body["required"] is (path != "/Batch/batch/{storeid}")
    schema = request_body["content"]["application/json"]["schema"]
    assert REQUEST_FIELDS[path] <= _properties(spec, schema)


def test_batch_listing_documents_its_query_parameters(spec):
    parameters = spec["paths"]["/Batch/{storeid}"]["get"]["parameters"]
    names = {p["name"] for p in parameters}
    assert {"storeid", "status", "from", "to", "limit", "includetransactions"} <= names


def test_health_schema_lists_status_and_version(spec):
    schema = spec["paths"]["/Health"]["get"]["responses"]["200"]["content"]["application/json"]
    assert {"status", "version", "time"} <= _properties(spec, schema["schema"])


def test_documented_text_limits_are_the_enforced_ones(srv, spec):
    """A fuzzer that keeps to the schema must not be refused: the limits agree."""
    (operation,) = spec["paths"]["/Transaction/radeem"].values()
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    pos_ref = _field(spec, schema, "PosRef")
    limit = next(option["maxLength"] for option in pos_ref["anyOf"] if "maxLength" in option)
    auth = (srv.username, srv.password)
    store = srv.stores[0].id
    for length, status in ((limit, 200), (limit + 1, 400)):
        payload = {
            "cardtoken": "1" * 16,
            "amount": 1,
            "FranchiseeID": store,
            "PosRef": "p" * length,
        }
        answer = httpx.post(f"{srv.url}/Transaction/radeem", json=payload, auth=auth)
        assert answer.status_code == status, length
    (operation,) = spec["paths"]["/Transaction/changestatus"].values()
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert _field(spec, schema, "reason")["maxLength"] == 200


def _field(spec: dict, schema: dict, name: str) -> dict:
    schema = _resolve(spec, schema)
    if name in schema.get("properties", {}):
        return schema["properties"][name]
    for part in schema.get("allOf", []):
        found = _field(spec, part, name)
        if found:
            return found
    return {}
