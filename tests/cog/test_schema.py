"""The Predictor's schema is the Replicate model's, and the committed .cog/openapi_schema.json is current."""

import json

from tests.support import DATA
from tools.openapi_schema import SCHEMA_PATH, build_schema, render

SEED = json.loads((DATA / "replicate_schema.json").read_text())


def test_committed_openapi_schema_is_current():
    assert SCHEMA_PATH.read_text() == render(), "run `python -m tools.openapi_schema` and commit the result"


def test_inputs_match_the_replicate_schema_exactly():
    inputs = build_schema()["components"]["schemas"]["Input"]
    properties = inputs["properties"]
    assert list(properties) == SEED["order"]
    assert sorted(properties, key=lambda n: properties[n]["x-order"]) == SEED["order"]
    for name, expected in SEED["fields"].items():
        actual = properties[name]
        assert actual["type"] == expected["type"], name
        assert actual["description"] == expected["description"], name
        assert actual.get("default") == expected.get("default"), name
        assert actual.get("enum") == expected.get("enum"), name
    assert inputs.get("required", []) == []


def test_optional_inputs_are_nullable_and_output_is_a_uri():
    schema = build_schema()["components"]["schemas"]
    for name in ("prompt", "input_audio", "continuation_end", "seed"):
        assert schema["Input"]["properties"][name]["nullable"] is True
    assert schema["Output"] == SEED["output"]


def test_duration_upper_bound_is_in_the_schema():
    duration = build_schema()["components"]["schemas"]["Input"]["properties"]["duration"]
    assert duration["minimum"] == 1 and duration["maximum"] == 300
