"""Hooks for the schema conformance run (tests/test_schema_conformance.py): patterns the served model can spell.

A `regex` the model's characters cannot match is refused with a 422 naming `regex`; which characters
a model has is not something a schema can state (it depends on the model a request names), so the
run's generated patterns use the tutorial model's characters.
"""

from hypothesis import strategies as st
from schemathesis import openapi

PATTERNS = ["(hey|how|are)", "[a-e ]{1,5}", "good( i am)?", "h.?", "[^x]{2}", "(a|e|i|o|u)+", "d[a-z]*y"]

openapi.format("regex", st.sampled_from(PATTERNS))
