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
TRAIN_REF = "train.py:train"  # cog.yaml `train:`: its TrainingInput validates /trainings in `--x-mode train`


def _title(name: str) -> str:
    return name.replace("_", " ").title()


def input_schema(info, title: str = "Input") -> dict:
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
    schema = {"title": title, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _inspect(ref: str):
    from cog import _inspector

    module, name = ref.split(":")
    return _inspector.create_predictor(module.removesuffix(".py"), name)


def _request_response(kind: str, input_ref: str, output_ref: str) -> tuple[dict, dict]:
    """Cog's request and response models for `kind` ("Prediction" or "Training")."""
    request = {
        "title": f"{kind}Request", "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "input": {"$ref": f"#/components/schemas/{input_ref}"},
            "webhook": {"title": "Webhook", "type": "string", "format": "uri", "minLength": 1, "maxLength": 65536},
            "webhook_events_filter": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookEvent"},
                                      "default": ["start", "output", "logs", "completed"]},
            "output_file_prefix": {"title": "Output File Prefix", "type": "string"},
        },
    }
    response = {
        "title": f"{kind}Response", "type": "object",
        "properties": {
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": f"#/components/schemas/{input_ref}"},
            "output": {"$ref": f"#/components/schemas/{output_ref}"},
            "status": {"$ref": "#/components/schemas/Status"},
            "error": {"title": "Error", "type": "string"},
            "logs": {"title": "Logs", "type": "string", "default": ""},
            "metrics": {"title": "Metrics", "type": "object"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "started_at": {"title": "Started At", "type": "string", "format": "date-time"},
            "completed_at": {"title": "Completed At", "type": "string", "format": "date-time"},
        },
    }
    return request, response


def _routes(kind: str, collection: str, id_name: str, verb: str) -> dict:
    """The create, idempotent-create and cancel routes of `collection` ("predictions" or "trainings")."""
    body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{kind}Request"}}}}
    ok = {"200": {"description": "Successful Response",
                  "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{kind}Response"}}}},
          "422": {"description": "Validation Error"}}
    parameter = [{"in": "path", "name": id_name, "required": True,
                  "schema": {"title": _title(id_name).replace("Id", "ID"), "type": "string"}}]
    return {
        f"/{collection}": {"post": {"summary": verb, "operationId": f"{verb.lower()}_{collection}_post",
                                    "description": f"Run a single {kind.lower()} on the model",
                                    "requestBody": body, "responses": ok}},
        f"/{collection}/{{{id_name}}}": {"put": {
            "summary": f"{verb} Idempotent", "operationId": f"{verb.lower()}_idempotent_{collection}__{id_name}__put",
            "parameters": parameter, "requestBody": body, "responses": ok}},
        f"/{collection}/{{{id_name}}}/cancel": {"post": {
            "summary": "Cancel" if kind == "Prediction" else "Cancel Training",
            "operationId": f"cancel_{collection}__{id_name}__cancel_post", "parameters": parameter,
            "responses": {"200": {"description": "Successful Response"}}}},
    }


def build_schema() -> dict:
    sys.path.insert(0, str(ROOT))
    info = _inspect(PREDICTOR_REF)
    training = _inspect(TRAIN_REF)
    status = {"title": "Status", "type": "string", "description": "An enumeration.",
              "enum": ["starting", "processing", "succeeded", "canceled", "failed"]}
    request, response = _request_response("Prediction", "Input", "Output")
    training_request, training_response = _request_response("Training", "TrainingInput", "TrainingOutput")
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get",
                          "responses": {"200": {"description": "Successful Response"}}}},
            "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get",
                                      "responses": {"200": {"description": "Successful Response"}}}},
            **_routes("Prediction", "predictions", "prediction_id", "Predict"),
            "/shutdown": {"post": {"summary": "Start Shutdown", "operationId": "start_shutdown_shutdown_post",
                                   "responses": {"200": {"description": "Successful Response"}}}},
            **_routes("Training", "trainings", "training_id", "Train"),
        },
        "components": {"schemas": {
            "Input": input_schema(info),
            "Output": info.output.json_type(),
            "Status": status,
            "WebhookEvent": {"title": "WebhookEvent", "type": "string", "description": "An enumeration.",
                             "enum": ["start", "output", "logs", "completed"]},
            "PredictionRequest": request,
            "PredictionResponse": response,
            "TrainingInput": input_schema(training, "TrainingInput"),
            "TrainingOutput": {**training.output.json_type(), "title": "TrainingOutput"},
            "TrainingRequest": training_request,
            "TrainingResponse": training_response,
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
