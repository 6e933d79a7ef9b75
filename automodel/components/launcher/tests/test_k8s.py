"""Kubernetes manifests: valid against the official OpenAPI schema (offline, kubernetes-validate), wired for the
c10d rendezvous, env and secrets by reference; the `k8s:` section's errors; applying with kubectl or the client."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from automodel.components.launcher import (
    K8sConfig,
    LaunchError,
    apply_k8s_manifests,
    default_k8s_job_name,
    k8s_follow_commands,
    manifests_to_yaml,
    render_k8s_manifests,
)

RECIPE = "automodel.recipes.llm.finetune"
CONFIG_TEXT = "model:\n  pretrained_model_name_or_path: /models/llama\nwandb:\n  api_key: ${WANDB_API_KEY}\n"
FULL = {
    "image": "ghcr.io/example/automodel:0.1",
    "job_name": "sft-run",
    "namespace": "training",
    "nodes": 4,
    "gpus_per_node": 8,
    "resources": {"requests": {"cpu": "32", "memory": "512Gi"}, "limits": {"memory": "600Gi"}},
    "volumes": [
        {"claim_name": "ckpt-pvc", "mount_path": "/checkpoints"},
        {"claim_name": "data-pvc", "mount_path": "/data", "read_only": True, "sub_path": "sft"},
    ],
    "env": {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": 8, "SOME_FLAG": True},
    "secret_env": {
        "WANDB_API_KEY": {"secret": "wandb", "key": "api-key"},
        "HF_TOKEN": {"secret": "hf", "key": "token"},
    },
    "service_account": "trainer",
    "image_pull_secrets": ["regcred"],
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "hf_home": "/data/hf",
    "workdir": "/workspace",
}


def render(**settings):
    config = K8sConfig.from_dict({**FULL, **settings})
    return config, render_k8s_manifests(
        config, config_text=CONFIG_TEXT, recipe_module=RECIPE, nproc_per_node=config.processes_per_node()
    )


def by_kind(manifests):
    return {m["kind"]: m for m in manifests}


# An older and the newest schema the validator ships (Indexed Jobs are GA since 1.24).
@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("settings", [{}, {"nodes": 1, "gpus_per_node": 0, "shm_size": None, "volumes": []}])
def test_manifests_validate_against_the_kubernetes_schema(version, settings):
    _, manifests = render(**settings)
    # The YAML form is what gets applied: validate what comes back from it (plain YAML, no anchors / aliases).
    text = manifests_to_yaml(manifests)
    assert "&id" not in text and "*id" not in text
    for manifest in yaml.safe_load_all(text):
        kubernetes_validate.validate(manifest, version, strict=True)


def test_schema_validation_catches_a_broken_manifest():
    _, manifests = render()
    job = by_kind(manifests)["Job"]
    job["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="envv"):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


def test_rendezvous_wiring():
    config, manifests = render()
    kinds = by_kind(manifests)
    service, job = kinds["Service"], kinds["Job"]
    pod = job["spec"]["template"]
    # Indexed Job: pod i is <job>-i; with the headless Service named like the pod subdomain, pod 0 has a DNS name.
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] == "sft-run"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 29500
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    for expected in (
        "--nnodes=4",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=sft-run-0.sft-run.training.svc.cluster.local:29500",
        "--rdzv-id=sft-run",
    ):
        assert expected in command, command
    assert command[-4:] == ["--module", RECIPE, "-c", "/etc/automodel/config.yaml"]


def test_config_map_env_secrets_volumes_and_resources():
    _, manifests = render()
    kinds = by_kind(manifests)
    assert kinds["ConfigMap"]["data"] == {"config.yaml": CONFIG_TEXT}  # placeholders kept, no secret value
    spec = kinds["Job"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert "value" not in env["WANDB_API_KEY"] and "value" not in env["HF_TOKEN"]
    assert env["OMP_NUM_THREADS"]["value"] == "8" and env["SOME_FLAG"]["value"] == "true"
    assert env["HF_HOME"]["value"] == "/data/hf" and env["PET_SHUTDOWN_TIMEOUT"]["value"] == "290"
    assert container["resources"]["limits"] == {"memory": "600Gi", "nvidia.com/gpu": 8}
    assert container["resources"]["requests"] == {"cpu": "32", "memory": "512Gi"}
    assert container["workingDir"] == "/workspace"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/automodel"]["name"]]["configMap"]["name"] == "sft-run-config"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes[mounts["/checkpoints"]["name"]]["persistentVolumeClaim"]["claimName"] == "ckpt-pvc"
    assert mounts["/data"]["readOnly"] is True and mounts["/data"]["subPath"] == "sft"
    assert spec["serviceAccountName"] == "trainer" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["restartPolicy"] == "Never" and spec["terminationGracePeriodSeconds"] == 300
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_unset_placeholder_warns(caplog):
    render(secret_env={})
    assert "uses ${WANDB_API_KEY}, which the pods do not set" in caplog.text


def test_defaults_and_job_name():
    name = default_k8s_job_name("llm", "finetune")
    assert name.startswith("llm-finetune-") and len(name) <= 50
    config = K8sConfig.from_dict({"image": "img"}, job_name=name)
    assert (config.namespace, config.nodes, config.processes_per_node()) == ("default", 1, 1)
    assert config.processes_per_node(2) == 2 and K8sConfig(image="i", gpus_per_node=4).processes_per_node() == 4
    assert "kubectl -n default logs -f -l job-name=" + name in "\n".join(k8s_follow_commands(config))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"image": None}, r"k8s\.image: required"),
        ({"nodes": 0}, r"k8s\.nodes: expected an integer >= 1, got 0"),
        ({"job_name": "My_Job"}, r"k8s\.job_name: expected lowercase letters"),
        ({"env": {"HF_TOKEN": "hf_abc"}}, r"k8s\.env\.HF_TOKEN: looks like a secret .* k8s\.secret_env\.NAME"),
        ({"secret_env": {"WANDB_API_KEY": "wandb"}}, r"k8s\.secret_env\.WANDB_API_KEY: expected \{secret: "),
        ({"volumes": [{"claim_name": "c", "mount_path": "rel"}]}, r"k8s\.volumes\[0\]\.mount_path: required: an abs"),
        ({"volumes": [{"claim": "c", "mount_path": "/c"}]}, r"k8s\.volumes\[0\]\.claim: unknown key"),
        ({"resources": {"request": {}}}, r"k8s\.resources\.request: unknown key; use requests and limits"),
        ({"gpu_per_node": 8}, r"k8s\.gpu_per_node: unknown key \(did you mean 'gpus_per_node'\?\)"),
    ],
)
def test_bad_settings(settings, match):
    with pytest.raises(LaunchError, match=match):
        K8sConfig.from_dict({**FULL, **settings})


def test_nproc_conflict():
    with pytest.raises(LaunchError, match=r"k8s\.nproc_per_node is 2 but --nproc-per-node is 4"):
        K8sConfig(image="i", nproc_per_node=2).processes_per_node(4)


# --- applying -----------------------------------------------------------------------------------------------------
@pytest.fixture()
def no_kube_client(monkeypatch, tmp_path):
    """No usable kubeconfig for the Python client (and no in-cluster service account)."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def write_manifest(tmp_path: Path):
    config, manifests = render()
    path = tmp_path / "manifest.yaml"
    path.write_text(manifests_to_yaml(manifests))
    return config, manifests, path


def test_apply_falls_back_to_kubectl(tmp_path, monkeypatch, no_kube_client):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/kubectl.args\necho "job.batch/sft-run created"\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config, manifests, path = write_manifest(tmp_path)
    assert apply_k8s_manifests(manifests, path, namespace=config.namespace) == "kubectl"
    assert (tmp_path / "kubectl.args").read_text().split() == ["apply", "-f", str(path)]


def test_kubectl_failure_is_reported(tmp_path, monkeypatch, no_kube_client):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(
        "#!/bin/sh\necho 'The connection to the server localhost:8080 was refused' >&2\nexit 1\n"
    )
    (bin_dir / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config, manifests, path = write_manifest(tmp_path)
    with pytest.raises(LaunchError, match=r"kubectl apply -f .*manifest\.yaml failed \(exit 1\): The connection"):
        apply_k8s_manifests(manifests, path, namespace=config.namespace)


def test_no_client_and_no_kubectl(tmp_path, monkeypatch, no_kube_client):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config, manifests, path = write_manifest(tmp_path)
    with pytest.raises(LaunchError, match=r"no way to reach a cluster.*kubectl apply -f .*manifest\.yaml"):
        apply_k8s_manifests(manifests, path, namespace=config.namespace)


def test_python_client_reports_an_unreachable_cluster(tmp_path, monkeypatch):
    # A kubeconfig whose API server refuses connections: the client is used, and its failure named.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # so kubectl cannot be what is used
    config, manifests, path = write_manifest(tmp_path)
    with pytest.raises(LaunchError, match=r"could not create ConfigMap sft-run-config on the cluster of your kubecon"):
        apply_k8s_manifests(manifests, path, namespace=config.namespace)
