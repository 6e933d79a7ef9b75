"""Kubernetes jobs: the `k8s:` section, the manifests (ConfigMap + headless Service + Indexed Job) and applying them.

Why an Indexed Job and a headless Service rather than a Kubeflow PyTorchJob: both are core Kubernetes APIs, so the
job runs on any cluster without installing an operator, and the manifests validate offline against the official
OpenAPI schema. Pod `i` of an Indexed Job is named `<job>-<i>`; with `subdomain: <job>` and the headless Service
`<job>`, pod 0 has a stable DNS name, which hosts torchrun's c10d rendezvous.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time as time_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automodel.components.launcher._settings import (
    TORCHRUN_SIGNALS,
    LaunchError,
    Problems,
    env_text,
    placeholders,
    settings_from_mapping,
)

logger = logging.getLogger(__name__)

CONFIG_MOUNT = "/etc/automodel"  # where the ConfigMap's config.yaml appears in the pods
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VOLUME_KEYS = ("claim_name", "mount_path", "read_only", "sub_path")
_MAX_JOB_NAME = 50  # pod hostnames are <job>-<index> and must stay within 63 characters


@dataclass
class K8sConfig:
    """The `k8s:` section of a config (docs/launchers.md has a worked example)."""

    image: str | None = None  # must contain automodel and its dependencies
    job_name: str = "automodel"
    namespace: str = "default"
    nodes: int = 1
    nproc_per_node: int | None = None  # ranks per pod; default gpus_per_node, else 1
    gpus_per_node: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    resources: dict[str, Any] = field(default_factory=dict)  # {requests: {cpu, memory}, limits: {...}}
    volumes: list[dict[str, Any]] = field(default_factory=list)  # PVCs: {claim_name, mount_path, read_only}
    env: dict[str, Any] = field(default_factory=dict)
    secret_env: dict[str, dict[str, str]] = field(default_factory=dict)  # NAME: {secret: s, key: k}
    service_account: str | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    master_port: int = 29500
    shm_size: str | None = "8Gi"  # memory-backed /dev/shm: NCCL and dataloader workers need more than 64Mi
    backoff_limit: int = 3
    termination_grace_period_s: int = 300
    cluster_domain: str = "cluster.local"
    python: str = "python"
    workdir: str | None = None
    hf_home: str | None = None
    job_dir: str | None = None  # where the manifest is written; default k8s_jobs/<job_name>

    def __post_init__(self) -> None:
        problems = Problems("k8s")
        if self.image is None:
            problems.add("image", "required: a container image that has automodel and its dependencies installed")
        problems.check_str("image", self.image)
        if (
            not isinstance(self.job_name, str)
            or not _DNS_LABEL.match(self.job_name)
            or len(self.job_name) > _MAX_JOB_NAME
        ):
            problems.add(
                "job_name",
                f"expected lowercase letters, digits and '-' (at most {_MAX_JOB_NAME} characters, starting and ending "
                f"with a letter or digit), got {self.job_name!r}",
            )
        if not isinstance(self.namespace, str) or not _DNS_LABEL.match(self.namespace):
            problems.add("namespace", f"expected a Kubernetes namespace name, got {self.namespace!r}")
        problems.check_int("nodes", self.nodes, minimum=1)
        problems.check_int("nproc_per_node", self.nproc_per_node, minimum=1, optional=True)
        problems.check_int("gpus_per_node", self.gpus_per_node, minimum=0)
        problems.check_int("master_port", self.master_port, minimum=1)
        problems.check_int("backoff_limit", self.backoff_limit, minimum=0)
        problems.check_int("termination_grace_period_s", self.termination_grace_period_s, minimum=1)
        for key in ("service_account", "workdir", "hf_home", "job_dir", "shm_size"):
            problems.check_str(key, getattr(self, key))
        for key in ("gpu_resource", "cluster_domain", "python"):
            problems.check_str(key, getattr(self, key), optional=False)
        problems.check_list_of_str("image_pull_secrets", self.image_pull_secrets)
        if problems.check_mapping("resources", self.resources):
            for key in self.resources:
                if key not in ("requests", "limits"):
                    problems.add(f"resources.{key}", "unknown key; use requests and limits")
        if problems.check_mapping("node_selector", self.node_selector):
            for key, value in self.node_selector.items():
                if not isinstance(value, str):
                    problems.add(f"node_selector.{key}", f"expected a string label value, got {value!r}")
        if not isinstance(self.tolerations, list) or not all(isinstance(t, dict) for t in self.tolerations):
            problems.add("tolerations", f"expected a list of toleration mappings, got {self.tolerations!r}")
        self._check_volumes(problems)
        problems.check_env("env", self.env, secrets_hint="put it in a Secret and reference it with k8s.secret_env.NAME")
        if problems.check_mapping("secret_env", self.secret_env):
            for name, ref in self.secret_env.items():
                if not isinstance(ref, dict) or set(ref) != {"secret", "key"} or not all(ref.values()):
                    problems.add(
                        f"secret_env.{name}",
                        f"expected {{secret: <Secret name>, key: <key in it>}}, got {ref!r}",
                    )
                elif name in (self.env if isinstance(self.env, dict) else {}):
                    problems.add(f"secret_env.{name}", "also set in k8s.env; keep one")
        problems.raise_if_any()

    def _check_volumes(self, problems: Problems) -> None:
        if not isinstance(self.volumes, list):
            problems.add("volumes", f"expected a list of {{claim_name, mount_path}}, got {self.volumes!r}")
            return
        for i, volume in enumerate(self.volumes):
            key = f"volumes[{i}]"
            if not isinstance(volume, dict):
                problems.add(key, f"expected {{claim_name: <PVC>, mount_path: /path}}, got {volume!r}")
                continue
            for unknown in set(volume) - set(_VOLUME_KEYS):
                problems.add(f"{key}.{unknown}", f"unknown key; allowed: {', '.join(_VOLUME_KEYS)}")
            if not isinstance(volume.get("claim_name"), str) or not volume.get("claim_name"):
                problems.add(f"{key}.claim_name", "required: the name of a PersistentVolumeClaim")
            path = volume.get("mount_path")
            if not isinstance(path, str) or not path.startswith("/"):
                problems.add(f"{key}.mount_path", f"required: an absolute path in the container, got {path!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, job_name: str = "automodel") -> K8sConfig:
        """Build from a config section; `job_name` is the default when the section has none."""
        return settings_from_mapping(cls, data, "k8s", job_name=job_name)

    def processes_per_node(self, cli_nproc: int | None = None) -> int:
        """Ranks per pod: nproc_per_node, else `--nproc-per-node`, else gpus_per_node, else 1."""
        if cli_nproc is not None and self.nproc_per_node is not None and cli_nproc != self.nproc_per_node:
            raise LaunchError(
                f"k8s.nproc_per_node is {self.nproc_per_node} but --nproc-per-node is {cli_nproc}; drop one of them"
            )
        return self.nproc_per_node or cli_nproc or self.gpus_per_node or 1

    @property
    def rendezvous_host(self) -> str:
        """Pod 0's fully qualified name: it matches pod 0's own canonical hostname (/etc/hosts), so torchrun there
        knows to host the c10d store even before the DNS record exists."""
        return f"{self.job_name}-0.{self.job_name}.{self.namespace}.svc.{self.cluster_domain}"


def default_k8s_job_name(domain: str, command: str) -> str:
    """`<domain>-<command>-<MMDD-HHMMSS>`: Job names must be unique in a namespace."""
    return f"{domain}-{command}-{time_module.strftime('%m%d-%H%M%S')}".replace("_", "-").lower()


def render_k8s_manifests(
    config: K8sConfig, *, config_text: str, recipe_module: str, nproc_per_node: int
) -> list[dict[str, Any]]:
    """ConfigMap (the job's config.yaml), headless Service and Indexed Job, as plain dicts."""
    name, labels = (
        config.job_name,
        {"app.kubernetes.io/name": "automodel", "app.kubernetes.io/instance": config.job_name},
    )
    _warn_unset_placeholders(config, config_text)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "namespace": config.namespace, "labels": dict(labels)},
        "data": {"config.yaml": config_text},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": config.namespace, "labels": dict(labels)},
        "spec": {
            "clusterIP": "None",
            "selector": dict(labels),
            # DNS records for pods that are not Ready yet: the rendezvous happens before any readiness.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": config.master_port, "targetPort": config.master_port}],
        },
    }
    command = [
        config.python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={config.nodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={config.rendezvous_host}:{config.master_port}",
        f"--rdzv-id={name}",
        "--module",
        recipe_module,
        "-c",
        f"{CONFIG_MOUNT}/config.yaml",
    ]
    container: dict[str, Any] = {
        "name": "trainer",
        "image": config.image,
        "command": command,
        "env": _container_env(config),
        "ports": [{"name": "rendezvous", "containerPort": config.master_port}],
        "volumeMounts": _volume_mounts(config),
    }
    if config.workdir:
        container["workingDir"] = config.workdir
    resources = {key: dict(value) for key, value in config.resources.items()}
    if config.gpus_per_node:
        resources.setdefault("limits", {})[config.gpu_resource] = config.gpus_per_node
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "subdomain": name,  # with the headless Service: <job>-<index>.<job>.<namespace>.svc resolves
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.termination_grace_period_s,
        "containers": [container],
        "volumes": _volumes(config),
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    if config.node_selector:
        pod_spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.tolerations]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": config.namespace, "labels": dict(labels)},
        "spec": {
            "completionMode": "Indexed",
            "completions": config.nodes,
            "parallelism": config.nodes,  # every pod must run at once for the rendezvous
            "backoffLimit": config.backoff_limit,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
    return [config_map, service, job]


def _container_env(config: K8sConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # Pod deletion sends SIGTERM to torchrun, which forwards it: let the ranks save before it kills them.
        {"name": "PET_SIGNALS_TO_HANDLE", "value": TORCHRUN_SIGNALS},
        {"name": "PET_SHUTDOWN_TIMEOUT", "value": str(max(1, config.termination_grace_period_s - 10))},
    ]
    if config.hf_home:
        env.append({"name": "HF_HOME", "value": config.hf_home})
    env += [{"name": name, "value": env_text(value)} for name, value in config.env.items()]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref["secret"], "key": ref["key"]}}}
        for name, ref in config.secret_env.items()
    ]
    return env


def _volume_mounts(config: K8sConfig) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}]
    if config.shm_size:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for i, volume in enumerate(config.volumes):
        mount = {"name": f"pvc-{i}", "mountPath": volume["mount_path"], "readOnly": bool(volume.get("read_only"))}
        if volume.get("sub_path"):
            mount["subPath"] = volume["sub_path"]
        mounts.append(mount)
    return mounts


def _volumes(config: K8sConfig) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": f"{config.job_name}-config"}}]
    if config.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}})
    for i, volume in enumerate(config.volumes):
        claim = {"claimName": volume["claim_name"], "readOnly": bool(volume.get("read_only"))}
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": claim})
    return volumes


def _warn_unset_placeholders(config: K8sConfig, config_text: str) -> None:
    provided = set(config.env) | set(config.secret_env) | ({"HF_HOME"} if config.hf_home else set())
    for name, default in placeholders(config_text):
        if default is None and name not in provided:
            logger.warning(
                "the job's config uses ${%s}, which the pods do not set: add k8s.secret_env.%s (a Secret) or k8s.env.%s",
                name,
                name,
                name,
            )


def manifests_to_yaml(manifests: list[dict[str, Any]]) -> str:
    """One multi-document YAML text, the form `kubectl apply -f` reads."""
    return yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=False)


def k8s_job_dir(config: K8sConfig, cwd: Path | None = None) -> Path:
    """Where the manifest is written before it is applied (default k8s_jobs/<job_name>)."""
    cwd = cwd or Path.cwd()
    path = Path(config.job_dir).expanduser() if config.job_dir else Path("k8s_jobs") / config.job_name
    return path if path.is_absolute() else cwd / path


def apply_k8s_manifests(manifests: list[dict[str, Any]], manifest_path: Path, *, namespace: str) -> str:
    """Create the resources with the `kubernetes` Python client when it is installed and a kubeconfig (or in-cluster
    config) is found, else with `kubectl apply -f manifest_path`; return which one was used."""
    client = _kubernetes_api_client()
    if client is not None:
        _create_with_client(client, manifests, namespace, manifest_path)
        return "the kubernetes Python client"
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run([kubectl, "apply", "-f", str(manifest_path)], capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise LaunchError(
                f"kubectl apply -f {manifest_path} failed (exit {result.returncode}): {detail}; check that kubectl "
                "points at your cluster (kubectl config current-context) and apply the manifest again"
            )
        logger.info("%s", result.stdout.strip())
        return "kubectl"
    raise LaunchError(
        "k8s: no way to reach a cluster from here: the kubernetes Python client (pip install 'automodel[kubernetes]') "
        f"found no kubeconfig, and kubectl is not on PATH; apply the manifest written to {manifest_path} with "
        f"`kubectl apply -f {manifest_path}` from a machine that can"
    )


def _kubernetes_api_client() -> Any | None:
    try:
        import kubernetes
    except ImportError:
        return None
    try:
        # The client reads $KUBECONFIG once, at import; pass it so the environment of this call counts.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    except Exception:  # no kubeconfig (ConfigException, or a file error): try the in-cluster service account
        try:
            kubernetes.config.load_incluster_config()
        except Exception:
            return None
    return kubernetes.client.ApiClient()


def _create_with_client(client: Any, manifests: list[dict[str, Any]], namespace: str, manifest_path: Path) -> None:
    from kubernetes import utils

    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            utils.create_from_dict(client, manifest, namespace=namespace)
        except utils.FailToCreateError as err:
            reasons = "; ".join(f"{getattr(e, 'status', '?')} {getattr(e, 'reason', e)}" for e in err.api_exceptions)
            hint = (
                f"it already exists: delete it (kubectl -n {namespace} delete -f {manifest_path}) or pick another "
                "k8s.job_name"
                if "409" in reasons
                else f"fix the cause and apply {manifest_path} again"
            )
            raise LaunchError(f"k8s: creating {kind} {name} failed ({reasons}); {hint}") from None
        except Exception as err:  # connection refused, TLS, authentication: the cluster was not reachable
            raise LaunchError(
                f"k8s: could not create {kind} {name} on the cluster of your kubeconfig ({type(err).__name__}: "
                f"{err}); check `kubectl cluster-info`, then apply {manifest_path} again"
            ) from None


def k8s_follow_commands(config: K8sConfig) -> list[str]:
    """Shell commands to watch the job."""
    ns, name = config.namespace, config.job_name
    return [
        f"kubectl -n {ns} get pods -l job-name={name}",
        f"kubectl -n {ns} logs -f -l job-name={name} --prefix --max-log-requests={max(config.nodes, 5)}",
        f"kubectl -n {ns} delete job/{name} service/{name} configmap/{name}-config",
    ]


__all__ = [
    "K8sConfig",
    "apply_k8s_manifests",
    "default_k8s_job_name",
    "k8s_follow_commands",
    "k8s_job_dir",
    "manifests_to_yaml",
    "render_k8s_manifests",
]
