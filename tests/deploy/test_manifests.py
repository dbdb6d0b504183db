"""deploy/: the Kubernetes manifests against the schemas (offline) and against what the image, the
app and its settings really are; the compose file and the balancer's config against the same."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from app.config import Settings
from app.devserver import ROOT, free_port
from app.lm.store import ModelStore
from app.metrics import Metrics
from tests.deploy.lb import CONFIG, HAPROXY

K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
SETTINGS = {f"CHARRNN_{name.upper()}" for name in Settings.model_fields}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in load(p)}


def dockerfile() -> dict:
    """The runtime stage's USER, EXPOSE, VOLUME, ENV and CMD."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.split("\nFROM ")[-1]
    found: dict = {"env": {}}
    for line in runtime.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            found["env"].update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
        elif word == "CMD":
            found["cmd"] = yaml.safe_load(rest)
        elif word in ("USER", "EXPOSE", "VOLUME"):
            found[word.lower()] = yaml.safe_load(rest) if word == "VOLUME" else rest.strip()
    return found


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def pod_spec(kind: str, name: str) -> dict:
    return resources()[(kind, name)]["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_the_kubernetes_schema(path, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")
    for doc in load(path):
        # strict: an unknown field (a typo such as readinesProbe) fails too; the schemas ship in the
        # package, nothing is fetched
        kubernetes_validate.validate(doc, version, strict=True)


def test_each_kustomization_lists_its_folders_manifests():
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())
        here = {p.name for p in kustomization.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert set(listed["resources"]) == here, kustomization
        images = {i["name"] for i in listed["images"]}
        for path in kustomization.parent.glob("*.yaml"):
            for doc in load(path):
                spec = doc.get("spec", {}).get("template", {}).get("spec", {})
                for container in spec.get("containers", []):
                    assert container["image"].split(":")[0] in images


def test_the_service_deployment():
    res = resources()
    deploy = res[("Deployment", "charrnn")]
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    [c] = pod["containers"]
    security = pod["securityContext"] | c["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # temporary files, on a read-only root
    claim = volumes[mounts[dockerfile()["env"]["CHARRNN_MODEL_STORE"]]]["persistentVolumeClaim"]["claimName"]
    assert res[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    # the objects around it point at it
    assert res[("Service", "charrnn")]["spec"]["selector"].items() <= labels.items()
    assert res[("PodDisruptionBudget", "charrnn")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = res[("HorizontalPodAutoscaler", "charrnn")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "charrnn")
    assert [m["resource"]["name"] for m in res[("HorizontalPodAutoscaler", "charrnn")]["spec"]["metrics"]] == ["cpu"]
    # the queue-depth alternative it describes is a metric the replicas do export
    assert "name: charrnn_queue_depth" in (K8S / "hpa.yaml").read_text()
    assert "charrnn_queue_depth" in {m.name for m in Metrics().registry.collect()}
    for name in ("CHARRNN_API_KEY", "CHARRNN_ADMIN_API_KEY"):
        ref = env_of(c)[name]["valueFrom"]["secretKeyRef"]
        assert ("Secret", ref["name"]) in res


def test_graceful_termination_outlasts_the_drain():
    pod = pod_spec("Deployment", "charrnn")
    [c] = pod["containers"]
    command = c["command"]
    drain = float(command[command.index("--graceful-timeout") + 1])
    pause = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pause + drain < pod["terminationGracePeriodSeconds"]


def test_image_ports_user_and_store_agree_with_the_dockerfile():
    image = dockerfile()
    uid, gid = (int(x) for x in image["user"].split(":"))
    port = int(image["expose"])
    store = image["env"]["CHARRNN_MODEL_STORE"]
    assert store in image["volume"]
    compose_image = compose()["services"]["charrnn"]["image"].split(":")[0]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for kustomization in K8S.rglob("kustomization.yaml"):  # the release's tag
        assert yaml.safe_load(kustomization.read_text())["images"] == [{"name": compose_image, "newTag": version}]
    for kind, name in (("Deployment", "charrnn"), ("Job", "charrnn-train")):
        pod = pod_spec(kind, name)
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
        [c] = pod["containers"]
        assert c["image"].split(":")[0] == compose_image
        assert any(m["mountPath"] == store for m in c["volumeMounts"])
        assert env_of(c)["CHARRNN_MODEL_STORE"]["value"] == store
    [c] = pod_spec("Deployment", "charrnn")["containers"]
    assert c["command"][:2] == image["cmd"][:2]  # charrnn serve
    assert int(c["command"][c["command"].index("--port") + 1]) == port
    assert [p["containerPort"] for p in c["ports"]] == [port]
    service_port = resources()[("Service", "charrnn")]["spec"]["ports"][0]
    assert service_port["targetPort"] in (port, c["ports"][0]["name"])


def test_every_setting_the_deployment_files_set_exists():
    def names(obj):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "name" and isinstance(value, str) and value.startswith("CHARRNN_"):
                    yield value
                yield from names(value)
        elif isinstance(obj, list):
            for item in obj:
                yield from names(item)

    set_in_k8s = {n for p in MANIFESTS for d in load(p) for n in names(d)}
    assert set_in_k8s and set_in_k8s <= SETTINGS, set_in_k8s - SETTINGS
    services = compose()["services"]
    set_in_compose = {n for s in services.values() for n in s.get("environment", {})}
    assert {n for n in set_in_compose if n.startswith("CHARRNN_")} <= SETTINGS
    # compose passes on every setting (but the store, which the image fixes to its volume)
    assert SETTINGS - {"CHARRNN_MODEL_STORE"} <= set(services["charrnn"]["environment"])
    used_by_balancer = set(re.findall(r"\$\{(CHARRNN_[A-Z0-9_]+)", CONFIG.read_text()))
    assert used_by_balancer <= SETTINGS and used_by_balancer <= set(services["lb"]["environment"])


def test_probes_and_balancer_checks_hit_real_routes(client):
    """The app's own routes (its OpenAPI paths) and their answers, through the lifespan."""
    paths = client.get("/openapi.json").json()["paths"]
    [c] = pod_spec("Deployment", "charrnn")["containers"]
    liveness, readiness = c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]
    check = re.search(r"option httpchk GET (\S+)", CONFIG.read_text()).group(1)
    for path in (liveness, readiness, check):
        assert "get" in paths[path]
        assert client.get(path).status_code == 200
    assert (liveness, readiness, check) == ("/health", "/ready", "/ready")
    # the POSTs the balancer may replay exist, as POSTs
    replayed = re.search(r"acl replay_safe path (.+)", CONFIG.read_text()).group(1).split()
    assert replayed and all("post" in paths[p] for p in replayed)
    assert "/train" not in replayed and "/corpora" not in replayed


# ---- the training Job ------------------------------------------------------------------------


def test_training_job_rendezvous_fits_its_headless_service():
    res = resources()
    job = res[("Job", "charrnn-train")]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    service = res[("Service", pod["subdomain"])]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    [c] = pod["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in c["command"] if a.startswith("--") and "=" in a)
    assert int(args["nnodes"]) == spec["completions"]
    assert args["master-addr"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(args["master-port"]) == service["spec"]["ports"][0]["port"]
    assert "--activate" in c["command"] and c["command"][c["command"].index("-m") + 1 :][:2] == ["app", "train"]
    assert env_of(c)["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"].endswith("job-completion-index']")
    assert env_of(c)["OMP_NUM_THREADS"]["value"] == str(c["resources"]["limits"]["cpu"])


@pytest.mark.server
def test_training_job_command_trains_and_activates(tmp_path):
    """The Job's container command, as Kubernetes expands it, run here as two "pods" (processes)
    with the rendezvous on loopback: a model trained across both, saved and activated."""
    [c] = pod_spec("Job", "charrnn-train")["containers"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("good i am fine\nhey how are you\n" * 40)
    store = tmp_path / "store"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {name: e.get("value", "") for name, e in env_of(c).items()}
        env |= {"NODE_RANK": str(rank), "CORPUS": str(corpus), "MODEL_NAME": "jobmodel"}
        env |= {"CHARRNN_MODEL_STORE": str(store), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
        command = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env[m.group(1)], a) for a in c["command"]]
        command = [
            "--master-addr=127.0.0.1" if a.startswith("--master-addr=") else a
            for a in command
            if not a.startswith("--master-port")
        ] + ["--hidden-size", "16", "--max-steps", "4"]  # small and short: the wiring is what is tested
        command.insert(1, f"--master-port={port}")
        procs.append(
            subprocess.Popen(
                [str(Path(sys.executable).parent / command[0]), *command[1:]],
                env={**os.environ, **env},
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    assert "on 2 processes" in "".join(outputs)  # the summary of rank 0: one run across both "pods"
    assert ModelStore(store).active_name() == "jobmodel"


# ---- compose and the balancer ----------------------------------------------------------------


def test_compose_publishes_one_port_through_the_balancer():
    services = compose()["services"]
    assert "ports" not in services["charrnn"]  # scaled replicas would fight over a host port
    [published] = services["lb"]["ports"]
    assert published.endswith(":8000")
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["lb"]["volumes"]
    # the balancer's defaults are compose's names: the service, port and Docker's DNS
    text = CONFIG.read_text()
    assert '"${LB_BACKEND-charrnn:8000}"' in text and '"${LB_DNS-127.0.0.11:53}"' in text
    assert '"${LB_BIND-:8000}"' in text
    # stopping waits for the drain: charrnn serve's 30 s graceful timeout
    assert int(services["charrnn"]["stop_grace_period"].rstrip("s")) > 30


@pytest.mark.skipif(HAPROXY is None, reason="no haproxy binary (.ci/run installs Debian's haproxy package)")
def test_balancer_config_is_valid_and_its_image_the_branch_tested():
    # as compose runs it: no LB_* variables, the defaults apply
    env = {"PATH": "/usr/bin:/bin"}
    check = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[WARNING]" not in check.stdout + check.stderr
    here = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout
    branch = re.search(r"version (\d+\.\d+)\.", here).group(1)
    image = compose()["services"]["lb"]["image"]
    assert re.search(r":-(\d+\.\d+)\.\d+}$", image).group(1) == branch, (image, here)
