"""The deployments in deploy/ as their tools read them: Kubernetes' own schemas (kubernetes-validate, offline) and
HAProxy's config check; and the numbers in them agree with the sidecar's settings."""

import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes.yaml"


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


@pytest.mark.parametrize("index", range(3))
def test_manifests_pass_kubernetes_strict_schemas(index):
    document = documents()[index]
    kubernetes_validate.validate(document, "1.37.0", strict=True)


def test_the_deployment_drains_before_it_is_killed():
    deployment = next(doc for doc in documents() if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "jam"}
    assert ports["jam"] == int(env["JAM_PORT"]) and ports["agent"] == int(env["JAM_AGENT_PORT"])
    assert env["JAM_HOST"] == "0.0.0.0"
    assert env["JAM_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # session ids name their pod
    assert pod["terminationGracePeriodSeconds"] > float(env["JAM_DRAIN_SECONDS"]), "SIGKILL would cut live jams"
    # SIGTERM reaches Cog's worker, whose sidecar drains and then asks Cog's server to shut down
    assert container["args"] == ["python", "-m", "cog.server.http", "--await-explicit-shutdown", "true"]
    assert env["TINI_KILL_PROCESS_GROUP"] == "1"
    assert int(env["COG_MAX_CONCURRENCY"]) == int(env["MUSICGEN_MAX_PREDICTIONS"]) + 1, "Cog's spare slot"
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert f"127.0.0.1:{ports['jam']}/admin/drain?wait=true" in pre_stop and "method='POST'" in pre_stop
    liveness = " ".join(container["livenessProbe"]["exec"]["command"])
    assert f"127.0.0.1:{ports['cog']}/health-check" in liveness and f"127.0.0.1:{ports['jam']}/health" in liveness
    services = {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] == "Service"}
    assert {s["spec"]["ports"][0]["targetPort"] for s in services.values()} == {"cog", "jam"}


@pytest.mark.skipif(shutil.which("haproxy") is None and not os.environ.get("CI"),
                    reason="Debian's haproxy is not installed (.ci/run installs it)")
def test_haproxy_accepts_the_configuration():
    env = dict(os.environ, REPLICA_1="127.0.0.1", REPLICA_2="127.0.0.1", REPLICA_3="127.0.0.1")
    check = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
