from __future__ import annotations

import re

import httpx

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def test_openapi_documents_every_endpoint(srv):
    spec = httpx.get(f"{srv.url}/openapi.json").json()
    expected = {
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
    }
    found = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert expected <= found
    for method, path in expected:
        operation = spec["paths"][path][method]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]
        if method in ("post", "patch") and path != "/Batch/batch/{storeid}":
            assert operation["requestBody"]["required"] is True
            assert operation["requestBody"]["content"]["application/json"]["schema"]
