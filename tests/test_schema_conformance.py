"""/openapi.json and the server agree: schemathesis with every check against a live server.

Clients generated from the schema trust it, so a request the schema allows must not be refused
(positive_data_acceptance), one it forbids must not be accepted (negative_data_rejection), every
status, header and body must be documented (status_code_, content_type_, response_headers_,
response_schema_conformance), 405s must name the allowed methods, and so on: `--checks all`.
The run is the one in the issue, `schemathesis run URL/openapi.json --checks all`, through
schemathesis' own command line (every phase: examples, coverage, fuzzing, stateful), with a fixed
seed and a bounded number of examples per operation, so it is the same run each time and takes
seconds. A failure prints schemathesis' report: each finding with a curl command that reproduces it.
"""

import os
import re
import subprocess
import sys
from urllib.parse import quote

import jsonschema_rs
import pytest

from app.devserver import Server

pytestmark = pytest.mark.server
SEED = 1
EXAMPLES_PER_OPERATION = 25
TIME_LIMIT_S = 180  # the run takes 10-30 s on two cores; a request that hangs shows up as a network error
HOOKS = {"SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}  # regex patterns the served model can spell
# training jobs the run starts stop within a second, and one runs at a time (the rest get 409)
SERVER = {"CHARRNN_MAX_TRAIN_SECONDS": "1"}


def schemathesis_run(url: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",  # the same examples every run, whatever ran before
        "--no-color",
        "--output-sanitize",
        "false",  # show the requests as sent (it would hide e.g. max_tokens, a "token")
        *extra,
    ]
    env = {**os.environ, **HOOKS}
    return subprocess.run(command, capture_output=True, text=True, timeout=TIME_LIMIT_S, check=False, env=env)


def test_every_operation_conforms_to_the_schema_under_every_check(tmp_path):
    with Server(tmp_path, env=SERVER) as live:
        run = schemathesis_run(live.url)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found disagreements between /openapi.json and the server:\n{report}"
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", report).groups())
    tested = int(re.search(r"Tested: (\d+)", report).group(1))
    assert tested == selected == total, report  # every operation


# ---- the findings, one request each: the schema's verdict and the server's agree ----------------
# (in process, no server: each case is one request). Accepted is what positive_data_acceptance
# accepts of a valid request: 2xx, or 404/409/429 for a resource that is missing, busy or overloaded.

JSON_CASES = [
    ("/complete", {"prefix": "a", "stop": [""]}),  # empty stop strings: minLength 1 in the schema
    ("/complete", {"prefix": "a", "top_p": 0, "temperature": 1, "max_new_chars": 3}),  # what 1e-400 reads as
    ("/complete", {"prefix": "a", "seed": 5.0, "n": 2.0, "max_new_chars": 3.0, "top_k": 2.0}),  # 5.0 is an integer
    ("/complete", {"prefix": "a", "n": 2.5}),
    ("/complete", {"prefix": "a", "n": True}),
    ("/complete", {"prefix": "a", "seed": 2**63 - 1, "max_new_chars": 1}),
    ("/complete", {"prefix": "a", "seed": 2**63, "max_new_chars": 1}),  # the schema said 2.0**63
    ("/complete", {"prefix": "a", "max_new_chars": 4097}),  # limits from the settings, stated in the schema
    ("/complete", {"prefix": "a", "n": 17}),
    ("/complete", {"prefix": "a" * 10_001}),
    ("/complete", {"prefix": "a", "stop": ["x" * 65]}),
    ("/complete", {"prefix": "a", "top_k": 10**30, "max_new_chars": 2}),  # beyond int64: it hung the request
    ("/v1/completions", {"prompt": ""}),
    ("/v1/completions", {"prompt": [""]}),
    ("/v1/completions", {"prompt": "a", "stop": ""}),
    ("/v1/completions", {"prompt": "a", "stop": ["a", ""]}),
    ("/v1/completions", {"prompt": "a", "logprobs": False}),  # false is not 0
    ("/v1/completions", {"prompt": "a", "logprobs": 0, "max_tokens": 2}),
    ("/v1/completions", {"prompt": "a", "n": "2"}),
    ("/v1/completions", {"prompt": "a", "stream": 1}),
    ("/v1/completions", {"prompt": "a", "top_p": 0, "max_tokens": 2}),
    ("/v1/completions", {"prompt": "a", "max_tokens": 4097}),
    ("/score", {"text": "ab", "model": "a..b"}),
    ("/score", {"text": "ab", "model": "no.such-model"}),
]
NAMES = ["a..b", "Ø", ".hidden", "x" * 65, "a\n", "no.such-model", "a.b_c-9."]
UPLOADS = [
    ("text/plain", b""),
    ("text/plain", b"   \n"),
    ("text/plain", b"\x1c\x1d\x1e"),  # whitespace to Python's str.strip()
    ("text/plain", b"ab"),
    ("text/plain", b"abc"),
    ("application/octet-stream", b" x "),
]


def accepted(status: int) -> bool:
    return 200 <= status < 300 or status in (404, 409, 429)


def validator(schema: dict, openapi: dict) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator({"components": openapi["components"], **schema})


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    return client.get("/openapi.json").json()


def agree(r, valid: bool, request: str) -> None:
    assert accepted(r.status_code) == valid, f"{request}: schema-{'valid' if valid else 'invalid'}, got {r.text}"
    if r.status_code == 422:
        assert r.json()["error"]["param"], r.text  # a 422 names the field


@pytest.mark.parametrize(("path", "body"), JSON_CASES)
def test_the_schema_and_the_server_agree_on_a_body(client, openapi, path, body):
    schema = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    agree(client.post(path, json=body), validator(schema, openapi).is_valid(body), f"POST {path} {body}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("method", "path"), [("GET", "/models/{}"), ("POST", "/models/{}/activate")])
def test_the_schema_and_the_server_agree_on_a_model_name(client, openapi, method, path, name):
    [param] = openapi["paths"][path.format("{name}")][method.lower()]["parameters"]
    r = client.request(method, path.format(quote(name, safe="")))
    agree(r, validator(param["schema"], openapi).is_valid(name), f"{method} {path.format(name)!r}")


@pytest.mark.parametrize(("content_type", "data"), UPLOADS)
def test_the_schema_and_the_server_agree_on_an_upload(client, openapi, content_type, data):
    schema = openapi["paths"]["/corpora"]["post"]["requestBody"]["content"][content_type]["schema"]
    r = client.post("/corpora", content=data, headers={"content-type": content_type})
    agree(r, validator(schema, openapi).is_valid(data.decode()), f"POST /corpora {content_type} {data!r}")


def test_a_form_upload_needs_the_part_the_schema_names(client, openapi):
    schema = openapi["paths"]["/corpora"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    for form in ({"text": "a text field"}, {"file": "a text field"}):
        r = client.post("/corpora", files={name: (None, value) for name, value in form.items()})
        agree(r, validator(schema, openapi).is_valid(form), f"POST /corpora multipart {form}")


def test_every_json_body_documents_its_413_and_415(openapi):
    for path, operations in openapi["paths"].items():
        for method, op in operations.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                assert {"413", "415", "422"} <= set(op["responses"]), f"{method.upper()} {path}"
