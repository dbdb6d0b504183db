"""Property-based fuzzing of the live OpenAPI schema (schemathesis): no server error, no response that breaks it.

Training and uploads are left out: a fuzzer starting real training jobs would spend minutes of
CPU; their input validation is covered case by case in tests/api/test_hostile.py.
"""

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.devserver import Server

pytestmark = pytest.mark.server
EXAMPLES_PER_OPERATION = 50
SKIP = re.compile(r"^(POST /train|POST /corpora|GET /train/\{job_id\}/events)$")


def fuzz(op, base_url: str, examples: list) -> None:
    """Runs up to EXAMPLES_PER_OPERATION generated requests against one operation."""

    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        examples.append(case)
        case.call_and_validate(base_url=base_url, checks=[not_a_server_error, response_schema_conformance], timeout=30)

    run()


def test_no_server_error_and_responses_match_the_schema(tmp_path):
    with Server(tmp_path) as live:
        schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
        fuzzed, examples = [], []
        for op in (r.ok() for r in schema.get_all_operations()):
            label = f"{op.method.upper()} {op.path}"
            if not SKIP.match(label):
                fuzz(op, live.url, examples)
                fuzzed.append(label)
    assert len(fuzzed) >= 12, fuzzed
    assert len(examples) >= 10 * len(fuzzed)
    print(f"fuzzed {len(fuzzed)} operations with {len(examples)} examples")
