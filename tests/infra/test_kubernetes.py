"""infra/kubernetes: the example overlay, rendered, validated against Kubernetes' schemas, scanned by
checkov, and checked against what callrec needs.

Rendering uses kustomize as built into kubectl (``kubectl kustomize``) where kubectl is installed, as
it is on this project's machines. Where it is not, :func:`render_minimal` renders the subset of
kustomize these files use (``resources``, ``namespace``, ``images`` and JSON 6902 ``patches``), and
refuses any other field; wherever kubectl is present, a test holds that subset to kustomize's output.

checkov pins its own versions of boto3 and others, so it runs from a virtual environment of its own,
``.venv-checkov`` at the repository root, made on first use.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from callrec.cli import build_parser
from callrec.config import IngestConfig, load_config

from . import checkov_env

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "kubernetes"
OVERLAY = K8S / "overlays" / "example"
# A recent release that kubernetes-validate ships schemas for.
KUBERNETES_VERSION = "1.35.0"
UID = 10001

Doc = dict[str, Any]


# --- rendering ----------------------------------------------------------------------------------

# Kinds without a namespace, among those kustomize's namespace transformer leaves alone.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
MINIMAL_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def render_minimal(directory: Path) -> list[Doc]:
    """The kustomize subset the files here use. Anything else is refused, not ignored."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - MINIMAL_FIELDS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields beyond the subset: {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render_minimal(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        if set(target) - {"kind", "name"} or "path" in patch:
            raise NotImplementedError(f"patch target {target}: only kind and name, inline JSON 6902")
        operations = jsonpatch.JsonPatch(yaml.safe_load(patch["patch"]))
        hits = [
            i
            for i, d in enumerate(docs)
            if (d["kind"], d["metadata"]["name"]) == (target["kind"], target["name"])
        ]
        if not hits:
            raise ValueError(f"patch target {target} matches nothing")
        for i in hits:
            docs[i] = operations.apply(docs[i])
    for image in kustomization.get("images", []):
        if set(image) - {"name", "newName", "newTag"}:
            raise NotImplementedError(f"image {image}: only name, newName and newTag")
        for doc in docs:
            spec = pod_spec(doc)
            for container in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
                name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if namespace := kustomization.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


def render_kubectl(directory: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    assert kubectl
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=True
    )
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    if shutil.which("kubectl"):
        return render_kubectl(OVERLAY)
    print("kubectl not found: rendering with the kustomize subset in this file")
    return render_minimal(OVERLAY)


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def keyed(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_the_minimal_renderer_agrees_with_kustomize() -> None:
    assert keyed(render_minimal(OVERLAY)) == keyed(render_kubectl(OVERLAY))


def test_the_minimal_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: acme-\n")
    with pytest.raises(NotImplementedError, match="namePrefix"):
        render_minimal(tmp_path)


def test_the_overlay_renders_every_piece(rendered: list[Doc]) -> None:
    assert set(keyed(rendered)) == {
        ("Namespace", "callrec"),
        ("ServiceAccount", "callrec"),
        ("ConfigMap", "callrec-config"),
        ("Job", "callrec-migrate"),
        ("Deployment", "callrec-web"),
        ("Service", "callrec-web"),
        ("Ingress", "callrec-web"),
        ("HorizontalPodAutoscaler", "callrec-web"),
        ("PodDisruptionBudget", "callrec-web"),
        ("Deployment", "callrec-worker"),
        ("HorizontalPodAutoscaler", "callrec-worker"),
        ("PodDisruptionBudget", "callrec-worker"),
        ("NetworkPolicy", "callrec-default-deny"),
        ("NetworkPolicy", "callrec-web-ingress"),
        ("NetworkPolicy", "callrec-egress-dns-postgres"),
        ("NetworkPolicy", "callrec-egress-https"),
    }
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "callrec", doc["metadata"]["name"]
    for doc in rendered:
        if spec := pod_spec(doc):
            for container in spec["containers"]:
                assert container["image"] == "111122223333.dkr.ecr.eu-west-1.amazonaws.com/callrec:0.1.0"


# --- schemas ------------------------------------------------------------------------------------


def test_every_object_is_valid_kubernetes(rendered: list[Doc]) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_catches_mistakes(rendered: list[Doc]) -> None:
    web = copy.deepcopy(by_kind(rendered, "Deployment")["callrec-web"])
    web["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBERNETES_VERSION, strict=True)
    hpa = copy.deepcopy(by_kind(rendered, "HorizontalPodAutoscaler")["callrec-worker"])
    hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"] = {"jobs": 20}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_the_secret_example_is_valid_and_holds_no_secret() -> None:
    (secret,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    text = secret["stringData"]["callrec.toml"]
    values = re.findall(r'(?:token|secret|sid)\s*=\s*"([^"]*)"', text)
    assert values and set(values) == {"CHANGE-ME"}
    assert "callrec:CHANGE-ME@" in text
    assert "secret.example.yaml" not in (K8S / "base" / "kustomization.yaml").read_text()


# --- what callrec needs -------------------------------------------------------------------------


def workloads(rendered: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in rendered if pod_spec(d) is not None}


def test_pods_are_locked_down(rendered: list[Doc]) -> None:
    pods = workloads(rendered)
    assert set(pods) == {"callrec-web", "callrec-worker", "callrec-migrate"}
    for name, doc in pods.items():
        spec = pod_spec(doc)
        assert spec is not None
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] == "callrec"
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] == UID
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["privileged"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            # The only writable places: /tmp and the data dir (spool), both emptyDir.
            for path in ("/tmp", "/var/lib/callrec"):  # noqa: S108 (paths in the container)
                assert "emptyDir" in volumes[mounts[path]["name"]], f"{name}: {path}"
            secrets = mounts["/etc/callrec/secrets"]
            assert secrets["readOnly"] is True
            assert volumes[secrets["name"]]["secret"]["secretName"] == "callrec-secrets"
            assert container["envFrom"] == [{"configMapRef": {"name": "callrec-config"}}]
            assert not [e for e in container.get("env", []) if "valueFrom" in e], "secrets come as files"


def config_map(rendered: list[Doc]) -> dict[str, str]:
    return by_kind(rendered, "ConfigMap")["callrec-config"]["data"]  # type: ignore[no-any-return]


def test_callrec_accepts_the_configuration(rendered: list[Doc], tmp_path: Path) -> None:
    data = config_map(rendered)
    (secret,) = yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    secrets_file = tmp_path / "callrec.toml"
    secrets_file.write_text(secret["stringData"]["callrec.toml"])
    assert data["CALLREC_CONFIG"] == "/etc/callrec/secrets/callrec.toml"
    config = load_config(secrets_file, environ=data)
    assert config.storage.backend == "s3" and config.storage.bucket == "acme-call-recordings"
    assert config.storage.sse == "aws:kms" and config.storage.sse_kms_key_id.startswith("arn:aws:kms:")
    assert config.keys.provider == "aws-kms"
    assert config.database.url.startswith("postgresql://")
    assert list(config.tenants) == ["acme"]
    assert str(config.data_dir) == "/var/lib/callrec"
    # The file mounted from the Secret is the one CALLREC_CONFIG names.
    for doc in workloads(rendered).values():
        spec = pod_spec(doc)
        assert spec is not None
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "secrets"]
        assert data["CALLREC_CONFIG"] == f"{mount['mountPath']}/callrec.toml"
        assert data["CALLREC_DATA_DIR"] in {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}


def test_each_workload_runs_its_callrec_command(rendered: list[Doc]) -> None:
    parser = build_parser()
    pods = workloads(rendered)
    commands = {name: pod_spec(doc)["containers"][0]["args"] for name, doc in pods.items()}  # type: ignore[index]
    assert commands == {
        "callrec-web": ["serve", "--no-workers"],
        "callrec-worker": ["worker"],
        "callrec-migrate": ["migrate"],
    }
    for args in commands.values():
        parser.parse_args(args)


def test_web_probes_and_ports(rendered: list[Doc]) -> None:
    spec = pod_spec(by_kind(rendered, "Deployment")["callrec-web"])
    assert spec is not None
    (container,) = spec["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == int(config_map(rendered)["CALLREC_SERVER__PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    service = by_kind(rendered, "Service")["callrec-web"]
    assert service["spec"]["selector"].items() <= spec_labels(rendered, "callrec-web").items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def spec_labels(rendered: list[Doc], workload: str) -> dict[str, str]:
    return workloads(rendered)[workload]["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_termination_grace_covers_the_shutdown_grace(rendered: list[Doc]) -> None:
    raw = config_map(rendered).get("CALLREC_INGEST__SHUTDOWN_GRACE")
    grace = (
        load_config(environ={"CALLREC_INGEST__SHUTDOWN_GRACE": raw}).ingest.shutdown_grace if raw else None
    )
    grace = grace or IngestConfig().shutdown_grace
    for name, doc in workloads(rendered).items():
        spec = pod_spec(doc)
        assert spec is not None
        pre_stop = (
            spec["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        )
        # SIGTERM comes after preStop; then the grace, then a few seconds to hand jobs back.
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + grace.total_seconds() + 5, name


def test_the_ingress_serves_the_public_url(rendered: list[Doc]) -> None:
    ingress = by_kind(rendered, "Ingress")["callrec-web"]["spec"]
    host = config_map(rendered)["CALLREC_SERVER__PUBLIC_BASE_URL"].removeprefix("https://")
    assert [r["host"] for r in ingress["rules"]] == [host]
    assert ingress["tls"][0]["hosts"] == [host]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "callrec-web" and backend["port"]["name"] == "http"


def test_autoscalers(rendered: list[Doc]) -> None:
    hpas = by_kind(rendered, "HorizontalPodAutoscaler")
    web, worker = hpas["callrec-web"]["spec"], hpas["callrec-worker"]["spec"]
    assert web["scaleTargetRef"]["name"] == "callrec-web"
    assert web["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    assert worker["scaleTargetRef"]["name"] == "callrec-worker"
    (metric,) = worker["metrics"]
    assert metric["type"] == "External"
    # The external metric is the one the prometheus-adapter rule serves, from a metric callrec has.
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    assert rule["name"]["as"] == metric["external"]["metric"]["name"]
    assert "max(callrec_queue_jobs{" in rule["metricsQuery"], "every web pod reports the same queue"
    from callrec.metrics import Metrics

    assert "callrec_queue_jobs" in {m.name for m in Metrics().registry.collect()}
    for hpa in (web, worker):
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_disruption_budgets_cover_the_pods(rendered: list[Doc]) -> None:
    for name, pdb in by_kind(rendered, "PodDisruptionBudget").items():
        assert pdb["spec"]["selector"]["matchLabels"].items() <= spec_labels(rendered, name).items()


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, and matchExpressions with In) picks these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_network_policies(rendered: list[Doc]) -> None:
    policies = by_kind(rendered, "NetworkPolicy")
    labels = {name: spec_labels(rendered, name) for name in workloads(rendered)}
    deny = policies["callrec-default-deny"]["spec"]
    assert (
        set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    )
    assert all(selects(deny["podSelector"], pod) for pod in labels.values())

    # Ingress: only web pods, only on 8080, only from the ingress controller and Prometheus.
    ingress_policies = [p["spec"] for p in policies.values() if p["spec"].get("ingress")]
    assert len(ingress_policies) == 1
    (web_ingress,) = ingress_policies
    assert [n for n, pod in labels.items() if selects(web_ingress["podSelector"], pod)] == ["callrec-web"]
    (rule,) = web_ingress["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]}
    assert namespaces == {"ingress-nginx", "monitoring"}
    assert all("podSelector" in p and "ipBlock" not in p for p in rule["from"])

    egress = policies["callrec-egress-dns-postgres"]["spec"]
    assert all(selects(egress["podSelector"], pod) for pod in labels.values())
    ports = {(p["port"], p["protocol"]) for rule in egress["egress"] for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}
    for rule in egress["egress"]:
        assert all("podSelector" in peer and "namespaceSelector" in peer for peer in rule["to"]), (
            "by selector"
        )

    https = policies["callrec-egress-https"]["spec"]
    assert {n for n, pod in labels.items() if selects(https["podSelector"], pod)} == {
        "callrec-web",
        "callrec-worker",
    }
    (rule,) = https["egress"]
    assert rule["ports"] == [{"port": 443, "protocol": "TCP"}]
    blocks = {peer["ipBlock"]["cidr"]: peer["ipBlock"]["except"] for peer in rule["to"]}
    assert blocks == {"0.0.0.0/0": ["169.254.169.254/32"], "::/0": ["fd00:ec2::254/128"]}
    # The README says why HTTPS egress cannot be narrowed to host names.
    assert "cannot name" in (K8S / "README.md").read_text()


def test_the_namespace_enforces_the_restricted_pod_security_standard(rendered: list[Doc]) -> None:
    labels = by_kind(rendered, "Namespace")["callrec"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- checkov ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def checkov() -> Path:
    return checkov_env.ensure_checkov()


def skipped_with_reasons(config: Path) -> dict[str, str]:
    """The skip-check entries of a checkov config file, each with the reason on its line."""
    skips = yaml.safe_load(config.read_text())["skip-check"]
    reasons = dict(re.findall(r"^\s*-\s*(CKV\w+)\s*#\s*(.+)$", config.read_text(), re.MULTILINE))
    assert set(skips) == set(reasons), "every skipped check has its reason on its line"
    return reasons


def run_checkov(checkov: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    """checkov on one file with the overlay's settings; --skip-download keeps it off the network."""
    argv = [str(checkov), "--config-file", str(OVERLAY / ".checkov.yaml"), "--file", str(manifest)]
    return subprocess.run(
        [*argv, "--output", "json", "--skip-download"], capture_output=True, text=True, timeout=300
    )


def test_checkov_finds_nothing(rendered: list[Doc], checkov: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "callrec.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered, sort_keys=False))
    config = OVERLAY / ".checkov.yaml"
    reasons = skipped_with_reasons(config)
    assert all(len(r.split()) >= 8 for r in reasons.values())
    done = run_checkov(checkov, manifest)
    report = json.loads(done.stdout)
    summary, results = report["summary"], report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert failed == [], "\n".join(failed)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 100
    assert summary["resource_count"] >= len(rendered)
    # Checks skipped in a resource's annotations carry their reason too.
    for check in results["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "").split()) >= 8, check["check_id"]
    ran = {c["check_id"] for c in results["passed_checks"] + results["skipped_checks"]}
    assert not set(reasons) & ran, "the skips in .checkov.yaml were applied"
    assert done.returncode == 0, done.stderr[-2000:]


def test_checkov_sees_a_weakened_pod(rendered: list[Doc], checkov: Path, tmp_path: Path) -> None:
    """The scan is not vacuous: a web pod that may run as root and escalate fails it."""
    web = copy.deepcopy(by_kind(rendered, "Deployment")["callrec-web"])
    context = web["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["allowPrivilegeEscalation"] = True
    context["readOnlyRootFilesystem"] = False
    manifest = tmp_path / "weak.yaml"
    manifest.write_text(yaml.safe_dump(web))
    done = run_checkov(checkov, manifest)
    failed = {c["check_id"] for c in json.loads(done.stdout)["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_22"} <= failed
    assert done.returncode != 0
