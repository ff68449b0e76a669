"""Writes .cog/openapi_schema.json from the Predictor, as `cog build` would.

Cog's HTTP server (coglet) validates prediction inputs against this file and serves it at /openapi.json; without
it, bad inputs reach predict() unchecked. There is no `cog` CLI here, so this generator uses the Cog SDK's own
inspector to read the Predictor's signature and emits the OpenAPI 3.0.2 document in Cog's layout.

    python -m tools.openapi_schema          # rewrite the file
    python -m tools.openapi_schema --check  # exit 1 if the file is stale
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / ".cog" / "openapi_schema.json"
PREDICTOR_REF = "predict.py:Predictor"


def _title(name: str) -> str:
    return name.replace("_", " ").title()


def input_schema(info) -> dict:
    from cog._adt import Repetition

    properties, required = {}, []
    for name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        prop = {"title": _title(name), "x-order": field.order, **field.type.json_type()}
        if field.description is not None:
            prop["description"] = field.description
        if field.choices is not None:
            prop["enum"] = list(field.choices)
        number = int if prop.get("type") == "integer" else float
        if field.ge is not None:
            prop["minimum"] = number(field.ge)
        if field.le is not None:
            prop["maximum"] = number(field.le)
        if field.max_length is not None:
            prop["maxLength"] = field.max_length
        optional = field.type.repetition in (Repetition.OPTIONAL, Repetition.OPTIONAL_REPEATED)
        if optional:
            prop["nullable"] = True
        if field.default is not None:
            prop["default"] = field.type.json_encode(field.default)
        elif not optional:
            required.append(name)
        properties[name] = prop
    schema = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def build_schema() -> dict:
    from cog import _inspector

    sys.path.insert(0, str(ROOT))
    module, name = PREDICTOR_REF.split(":")
    info = _inspector.create_predictor(module.removesuffix(".py"), name)
    status = {"title": "Status", "type": "string", "description": "An enumeration.",
              "enum": ["starting", "processing", "succeeded", "canceled", "failed"]}
    request = {
        "title": "PredictionRequest", "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "input": {"$ref": "#/components/schemas/Input"},
            "webhook": {"title": "Webhook", "type": "string", "format": "uri", "minLength": 1, "maxLength": 65536},
            "webhook_events_filter": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookEvent"},
                                      "default": ["start", "output", "logs", "completed"]},
            "output_file_prefix": {"title": "Output File Prefix", "type": "string"},
        },
    }
    response = {
        "title": "PredictionResponse", "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": "#/components/schemas/Input"},
            "output": {"$ref": "#/components/schemas/Output"},
            "status": {"$ref": "#/components/schemas/Status"},
            "error": {"title": "Error", "type": "string"},
            "logs": {"title": "Logs", "type": "string", "default": ""},
            "metrics": {"title": "Metrics", "type": "object"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "started_at": {"title": "Started At", "type": "string", "format": "date-time"},
            "completed_at": {"title": "Completed At", "type": "string", "format": "date-time"},
        },
    }
    json_body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}}
    ok = {"200": {"description": "Successful Response",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionResponse"}}}},
          "422": {"description": "Validation Error"}}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get",
                          "responses": {"200": {"description": "Successful Response"}}}},
            "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get",
                                      "responses": {"200": {"description": "Successful Response"}}}},
            "/predictions": {"post": {"summary": "Predict", "operationId": "predict_predictions_post",
                                      "description": "Run a single prediction on the model",
                                      "requestBody": json_body, "responses": ok}},
            "/predictions/{prediction_id}": {"put": {
                "summary": "Predict Idempotent", "operationId": "predict_idempotent_predictions__prediction_id__put",
                "parameters": [{"in": "path", "name": "prediction_id", "required": True,
                                "schema": {"title": "Prediction ID", "type": "string"}}],
                "requestBody": json_body, "responses": ok}},
            "/predictions/{prediction_id}/cancel": {"post": {
                "summary": "Cancel", "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [{"in": "path", "name": "prediction_id", "required": True,
                                "schema": {"title": "Prediction ID", "type": "string"}}],
                "responses": {"200": {"description": "Successful Response"}}}},
            "/shutdown": {"post": {"summary": "Start Shutdown", "operationId": "start_shutdown_shutdown_post",
                                   "responses": {"200": {"description": "Successful Response"}}}},
        },
        "components": {"schemas": {
            "Input": input_schema(info),
            "Output": info.output.json_type(),
            "Status": status,
            "WebhookEvent": {"title": "WebhookEvent", "type": "string", "description": "An enumeration.",
                             "enum": ["start", "output", "logs", "completed"]},
            "PredictionRequest": request,
            "PredictionResponse": response,
        }},
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed schema is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            sys.exit(f"{SCHEMA_PATH} is stale: run `python -m tools.openapi_schema`")
        return
    SCHEMA_PATH.parent.mkdir(exist_ok=True)
    SCHEMA_PATH.write_text(text)


if __name__ == "__main__":
    main()
