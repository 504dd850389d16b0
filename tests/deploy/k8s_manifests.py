"""Checks of k8s/, for tests/deploy/test_k8s.sh (run with the kubernetes-validate venv).

  python k8s_manifests.py check ROOT
      every manifest against the Kubernetes API schemas (kubernetes-validate, strict,
      several versions), the ServiceMonitor against its own schema below, and the
      properties the manifests promise (hardening, probes, grace period, wiring), for
      each choice of BigQuery credentials: GKE workload identity (k8s/ as written) and
      a key Secret (the k8s/key-secret component's patches applied here; where kubectl
      is installed, `kubectl kustomize` must render both the same way).
  python k8s_manifests.py mutants ROOT
      that each of a list of harmful edits to the manifests fails `check`.
  python k8s_manifests.py pod ROOT OUT.yaml HOST_PORT processor=IMG simulator=IMG tansu=IMG bqemulator=IMG
      the processor's StatefulSet pod template as a Pod podman can play, with a broker,
      the BigQuery emulator and the simulator beside it (see pod() for what changes).
  python k8s_manifests.py run-args ROOT processor|reconcile [ARG ...]
      that pod's processor container (ARGs appended to its arguments), or the
      reconcile CronJob's (each --FLAG=VALUE replacing that flag, --FLAG= removing
      it), as `podman run` arguments (IMAGE in place of the image), to run in the pod.

Every check names what broke; `check` exits non-zero on any.
"""

import copy
import difflib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

NAMESPACE = "paydedup"
UID = 10001
# Clusters upgrade slowly (managed offerings keep old releases in extended support):
# 1.28 and 1.30 as well as the newest release the installed kubernetes-validate knows.
VERSIONS = ["1.28", "1.30", kubernetes_validate.latest_version()]

# The ServiceMonitor is a CRD, which kubernetes-validate has no schema for (it only
# warns and passes). This is the part of monitoring.coreos.com/v1's schema that
# k8s/monitoring.yaml uses, field names and patterns as in the prometheus-operator CRD,
# closed (additionalProperties: false) as the API server's strict field validation
# would be: a misspelt field fails here as it would on `kubectl apply`.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["endpoints", "selector"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}

# Kinds that are not Kubernetes API objects or have no schema in kubernetes-validate,
# each with the check that stands in for it.
OWN_SCHEMA = {"ServiceMonitor", "Kustomization"}

# The choices of BigQuery credentials (k8s/README.md): the component that makes each
# (None: k8s/ as written, GKE workload identity).
VARIANTS = {"workload identity": None, "key Secret": "key-secret"}
# Where the key-secret component puts the key, and the ServiceAccount annotation
# workload identity reads.
KEY_MODE = 0o440
WORKLOAD_IDENTITY = "iam.gke.io/gcp-service-account"
# Credentials other than Application Default Credentials: none in these manifests.
CREDENTIAL_FLAGS = {"PAYDEDUP_BIGQUERY_CREDENTIALS", "PAYDEDUP_BIGQUERY_TOKEN_ENV", "PAYDEDUP_BIGQUERY_NO_AUTH"}
# What reconcile must read as the processor does: the dataset, and the windows it
# checks the metrics with (it refuses a window size that is not the processor's).
SHARED_SETTINGS = {"PAYDEDUP_SINK", "PAYDEDUP_WINDOW_SECS", "PAYDEDUP_ALLOWED_LATENESS_SECS",
                   "PAYDEDUP_FUTURE_TOLERANCE_SECS"}
# The CronJob's scheduled mode: its margin must exceed the delivery delay the alerts
# allow (PaydedupConsumerLagHigh: a 10-minute backlog), its lookback cover two runs
# (docs/operations.md, "Scheduled mode").
MIN_SETTLE_SECS = 600

FAILURES = []
VARIANT = [None]

# The podman pod (pod()): its name, the simulator's record count, the emulator's dataset
# and where the processor finds the emulator on the pod's localhost.
POD = "paydedup-k8s-test"
RECORDS = 2000
DATASET = "paydedup-local.paydedup"
BIGQUERY_EMULATOR = {
    "PAYDEDUP_BIGQUERY_NO_AUTH": "true",
    "PAYDEDUP_BIGQUERY_REST_URL": "http://127.0.0.1:9050",
    "PAYDEDUP_BIGQUERY_GRPC_URL": "http://127.0.0.1:9060",
}


def fail(message):
    FAILURES.append(f"[{VARIANT[0]}] {message}" if VARIANT[0] else message)


def expect(condition, message):
    if not condition:
        fail(message)
    return condition


def load(root):
    """{file name: [documents]} of k8s/*.yaml and of the components'
    k8s/NAME/kustomization.yaml (as `NAME/kustomization.yaml`)."""
    docs = {}
    paths = glob.glob(os.path.join(root, "k8s", "*.yaml")) + glob.glob(os.path.join(root, "k8s", "*", "kustomization.yaml"))
    for path in sorted(paths):
        with open(path) as f:
            docs[os.path.relpath(path, os.path.join(root, "k8s"))] = [d for d in yaml.safe_load_all(f) if d]
    return docs


def split(docs):
    """(kustomization, {component: its Kustomization}, the resources' docs) of load()'s
    result."""
    docs = copy.deepcopy(docs)
    (k,) = docs.pop("kustomization.yaml", [None])
    components = {}
    for name in [n for n in docs if "/" in n]:
        (c,) = docs.pop(name)
        components[name.split("/")[0]] = c
    return k, components, docs


# --- kustomize's strategic merge patches, as far as the components use them ------------

# The lists a strategic merge patch merges by key instead of replacing (the Kubernetes
# API's patchMergeKey of each field the components patch).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


def merge(target, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS:
            items = target.setdefault(key, [])
            for item in value:
                same = next((t for t in items if t.get(MERGE_KEYS[key]) == item.get(MERGE_KEYS[key])), None)
                if same is None:
                    items.append(copy.deepcopy(item))
                else:
                    merge(same, item)
        else:
            target[key] = copy.deepcopy(value)


def apply_component(name, component, docs):
    """`docs` with `component`'s patches applied (strategic merge patches with a target
    kind and name: what the components here use; anything else is a failure)."""
    docs = copy.deepcopy(docs)
    if not expect(component.get("apiVersion") == "kustomize.config.k8s.io/v1alpha1"
                  and component.get("kind") == "Component",
                  f"{name}/kustomization.yaml: not a kustomize.config.k8s.io/v1alpha1 Component"):
        return docs
    unknown = set(component) - {"apiVersion", "kind", "patches"}
    expect(not unknown, f"{name}/kustomization.yaml: fields this test does not apply: {sorted(unknown)}")
    for p in component.get("patches", []):
        target = p.get("target", {})
        patch = yaml.safe_load(p.get("patch", "")) if "patch" in p else None
        if not expect(isinstance(patch, dict) and set(target) == {"kind", "name"}
                      and patch.get("kind") == target["kind"] and patch.get("metadata", {}).get("name") == target["name"],
                      f"{name}: a patch that is not an inline strategic merge patch of one kind and name: {p}"):
            continue
        hits = [d for items in docs.values() for d in items
                if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if expect(len(hits) == 1, f"{name}: patch target {target['kind']}/{target['name']} matches {len(hits)} objects"):
            merge(hits[0], {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")})
    return docs


def variants(components, docs):
    """{variant: docs} for each choice of credentials (VARIANTS)."""
    out = {}
    for variant, component in VARIANTS.items():
        if component is None:
            out[variant] = docs
        elif expect(component in components, f"k8s/{component}/kustomization.yaml is missing"):
            out[variant] = apply_component(component, components[component], docs)
    return out


def seconds(value):
    return int(re.fullmatch(r"(\d+)", str(value)).group(1))


# --- what the Rust code reads -------------------------------------------------------

def env_names(root, *dirs):
    """The variables the code under `dirs` reads: the PAYDEDUP_* ones its flags declare
    (`env = "…"`) and those it reads itself (`env::var("…")`, `env::var_os("…")`, as
    Application Default Credentials read GOOGLE_APPLICATION_CREDENTIALS)."""
    names = set()
    for d in dirs:
        for path in glob.glob(os.path.join(root, d, "**", "*.rs"), recursive=True):
            with open(path) as f:
                text = f.read()
            names.update(re.findall(r'env\s*=\s*"(PAYDEDUP_[A-Z0-9_]+)"', text))
            names.update(re.findall(r'env::var(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"\s*\)', text))
    return names


def exit_flush_secs(root, give_up):
    """The processor's exit flush bound for a --sink-give-up-secs of `give_up` (None:
    its default), read from the code so that a change there fails this test instead of
    leaving the grace period short."""
    with open(os.path.join(root, "crates/processor/src/config/mod.rs")) as f:
        config = f.read()
    with open(os.path.join(root, "crates/processor/src/wiring.rs")) as f:
        wiring = f.read()
    default = re.search(r'long = "sink-give-up-secs".*?default_value = "(\d+)"', config, re.S)
    floor = re.search(r"sink_give_up\.max\(Duration::from_secs\((\d+)\)\)", wiring)
    if not (default and floor):
        raise SystemExit(
            "the processor's exit flush is no longer max(--sink-give-up-secs, N) as "
            "wiring.rs had it: re-derive terminationGracePeriodSeconds in "
            "k8s/processor.yaml and update exit_flush_secs() here"
        )
    give_up = int(default.group(1)) if give_up is None else give_up
    return max(give_up, int(floor.group(1)))


# --- the checks -----------------------------------------------------------------------

def validate_schemas(docs):
    for name, items in docs.items():
        for doc in items:
            kind = doc.get("kind")
            where = f"{name}: {kind}/{doc.get('metadata', {}).get('name')}"
            if kind == "ServiceMonitor":
                try:
                    jsonschema.validate(doc, SERVICE_MONITOR)
                except jsonschema.ValidationError as e:
                    fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
                continue
            if kind in OWN_SCHEMA:
                continue
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(f"{where} against {version}: {'.'.join(map(str, e.path))}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    # The command line only warns here; an unknown kind is a typo.
                    fail(f"{where}: {e.message}")


def check_kustomization(k, components, docs):
    if not expect(k, "k8s/kustomization.yaml is missing"):
        return
    expect(k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization",
           "kustomization.yaml: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    expect(k.get("namespace") == NAMESPACE, f"kustomization.yaml: namespace is not {NAMESPACE}")
    expect(sorted(k.get("resources", [])) == sorted(docs),
           f"kustomization.yaml lists {sorted(k.get('resources', []))}, k8s/ holds {sorted(docs)}")
    # Components are the credentials' choice: each one a directory here, all checked
    # whether on or off (VARIANTS).
    for c in k.get("components") or []:
        expect(c in components, f"kustomization.yaml: component {c} is not a directory of k8s/ with a kustomization.yaml")
    expect(sorted(components) == sorted(c for c in VARIANTS.values() if c),
           f"k8s/ holds components {sorted(components)}; this test checks {sorted(c for c in VARIANTS.values() if c)}")
    unknown = set(k) - {"apiVersion", "kind", "namespace", "resources", "components", "images"}
    expect(not unknown, f"kustomization.yaml: fields this test does not check: {sorted(unknown)}")


def by_kind(docs):
    objects = {}
    for items in docs.values():
        for doc in items:
            objects.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    return objects


def check_namespaces(objects):
    expect(NAMESPACE in objects.get("Namespace", {}), f"no Namespace {NAMESPACE}")
    ns = objects.get("Namespace", {}).get(NAMESPACE, {})
    expect(ns.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
           f"Namespace {NAMESPACE}: the restricted Pod Security Standard is not enforced")
    for kind, items in objects.items():
        for name, doc in items.items():
            if kind != "Namespace":
                expect(doc["metadata"].get("namespace") == NAMESPACE,
                       f"{kind}/{name} is not in namespace {NAMESPACE}")


def pod_templates(objects):
    """(workload, pod spec) of every workload."""
    for name, s in objects.get("StatefulSet", {}).items():
        yield f"StatefulSet/{name}", s["spec"]["template"]
    for name, j in objects.get("Job", {}).items():
        yield f"Job/{name}", j["spec"]["template"]
    for name, c in objects.get("CronJob", {}).items():
        yield f"CronJob/{name}", c["spec"]["jobTemplate"]["spec"]["template"]


def check_hardening(objects):
    """The restricted Pod Security Standard and then some, on every pod."""
    templates = list(pod_templates(objects))
    expect(len(templates) >= 3, f"expected the processor, simulator and reconcile workloads, got {[w for w, _ in templates]}")
    for workload, template in templates:
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        expect(pod.get("runAsNonRoot") is True, f"{workload}: runAsNonRoot is not true")
        expect(pod.get("runAsUser") == UID and pod.get("runAsGroup") == UID,
               f"{workload}: runAsUser/runAsGroup are not {UID}")
        expect(pod.get("fsGroup") == UID, f"{workload}: fsGroup is not {UID} (a fresh volume would not be writable)")
        expect(pod.get("seccompProfile", {}).get("type") == "RuntimeDefault",
               f"{workload}: seccompProfile is not RuntimeDefault")
        expect(not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"),
               f"{workload}: shares a host namespace")
        expect(spec.get("enableServiceLinks") is False,
               f"{workload}: service links would add PAYDEDUP_* variables")
        for v in spec.get("volumes", []):
            expect("hostPath" not in v, f"{workload}: hostPath volume {v['name']}")
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload} container {c['name']}"
            sc = c.get("securityContext", {})
            expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is not read-only")
            expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false")
            expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities do not drop ALL")
            expect(not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities")
            expect(not sc.get("privileged"), f"{where}: privileged")
            expect(sc.get("runAsUser", UID) == UID and sc.get("runAsNonRoot", True) is True,
                   f"{where}: overrides the pod's non-root user")
            res = c.get("resources", {})
            expect(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
                   and res.get("limits", {}).get("memory"),
                   f"{where}: no cpu/memory request or no memory limit")
            expect(re.fullmatch(r"paydedup/(processor|simulator):[\w.-]+", c["image"]),
                   f"{where}: image {c['image']} is not a tagged paydedup/ image (kustomization.yaml sets the registry)")


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_env(root, objects):
    """Every variable is one the program reads (clap ignores a misspelt one silently)
    and every ConfigMap reference resolves."""
    # The processor's flags, its Kubernetes client (POD_NAMESPACE) and the BigQuery
    # client's Application Default Credentials (crates/sink: GOOGLE_APPLICATION_CREDENTIALS).
    processor_env = env_names(root, "crates/processor/src", "crates/sink/src")
    simulator_env = env_names(root, "simulator/src")
    maps = objects.get("ConfigMap", {})
    for workload, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            known = simulator_env if "simulator" in c["image"] else processor_env
            for name, e in env_map(c).items():
                expect(name in known, f"{workload}: {name} is not a variable {c['image']} reads")
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    expect(ref["key"] in maps.get(ref["name"], {}).get("data", {}),
                           f"{workload}: {name} refers to ConfigMap {ref['name']} key {ref['key']}, which is not there")
            # envFrom: every key of the ConfigMap becomes a variable of the container.
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef")
                if not expect(ref and not src.get("prefix"), f"{workload}: envFrom other than a whole ConfigMap: {src}"):
                    continue
                if expect(ref["name"] in maps, f"{workload}: envFrom ConfigMap {ref['name']}, which is not there"):
                    for key in maps[ref["name"]].get("data", {}):
                        expect(key in known, f"{workload}: ConfigMap {ref['name']} key {key} is not a variable {c['image']} reads")
            for arg in c.get("args", []):
                for var in re.findall(r"\$\((\w+)\)", str(arg)):
                    expect(var in env_of(c, maps), f"{workload}: argument {arg} expands {var}, which the container does not define")
    for name, cm in maps.items():
        sink = cm.get("data", {}).get("PAYDEDUP_SINK")
        if sink is not None:
            expect(re.fullmatch(r"bigquery:[\w-]+\.\w+", sink), f"ConfigMap {name}: PAYDEDUP_SINK {sink} is not bigquery:PROJECT.DATASET")


def env_of(container, maps):
    """{name: the env entry, or ("ConfigMap", name) for one from envFrom} as the kubelet
    sets them: envFrom first, env overriding."""
    out = {}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef") or {}
        for key in maps.get(ref.get("name"), {}).get("data", {}):
            out[key] = ("ConfigMap", ref["name"])
    out.update(env_map(container))
    return out


def setting_source(container, maps, name):
    """Where variable `name` of `container` comes from: ("ConfigMap", map, key),
    ("value", literal), ("other", entry) or None (unset)."""
    e = env_of(container, maps).get(name)
    if e is None:
        return None
    if isinstance(e, tuple):
        return ("ConfigMap", e[1], name)
    ref = e.get("valueFrom", {}).get("configMapKeyRef")
    if ref:
        return ("ConfigMap", ref["name"], ref["key"])
    return ("value", e["value"]) if "value" in e else ("other", repr(e))


def from_config_map(container, maps, name):
    """The ConfigMap `name` comes from in `container`, or None (a literal, or unset)."""
    src = setting_source(container, maps, name)
    return src[1] if src and src[0] == "ConfigMap" else None


def check_credentials(variant, objects, workload, spec, container):
    """BigQuery credentials are Application Default Credentials: in the workload identity
    variant, the pod's ServiceAccount names a Google service account and nothing names
    a key; in the key Secret variant, GOOGLE_APPLICATION_CREDENTIALS names a file on a
    read-only mount of a Secret that is not optional. No other credential setting."""
    maps = objects.get("ConfigMap", {})
    env = env_of(container, maps)
    for name in sorted(CREDENTIAL_FLAGS & set(env)):
        fail(f"{workload}: {name} is set (Application Default Credentials serve both variants)")
    secrets = {v["name"]: v["secret"] for v in spec.get("volumes", []) if "secret" in v}
    path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if VARIANTS[variant] is None:
        sa = objects.get("ServiceAccount", {}).get(spec.get("serviceAccountName"), {})
        account = sa.get("metadata", {}).get("annotations", {}).get(WORKLOAD_IDENTITY, "")
        expect(re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]@[a-z][-a-z0-9]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com", account),
               f"{workload}: ServiceAccount {spec.get('serviceAccountName')} has no {WORKLOAD_IDENTITY} annotation naming a Google service account")
        expect(path is None, f"{workload}: GOOGLE_APPLICATION_CREDENTIALS is set without the key Secret "
                             "(the processor stops at start when the file is missing)")
        expect(not secrets, f"{workload}: mounts Secret volumes {sorted(secrets)} without the key-secret component")
        return
    if not expect(path, f"{workload}: no GOOGLE_APPLICATION_CREDENTIALS: Application Default Credentials "
                        "would not read the key"):
        return
    path = path.get("value") if isinstance(path, dict) else None
    if not expect(path, f"{workload}: GOOGLE_APPLICATION_CREDENTIALS is not a literal path"):
        return
    mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not expect(len(mounts) == 1 and mounts[0]["name"] in secrets and mounts[0].get("readOnly"),
                  f"{workload}: {path} is not on a read-only Secret mount"):
        return
    secret = secrets[mounts[0]["name"]]
    expect(not secret.get("optional"), f"{workload}: the key Secret is optional: the processor would stop "
                                       f"at start on the missing {path} instead of the pod waiting for it")
    expect(secret.get("defaultMode") == KEY_MODE, f"{workload}: the key's defaultMode is not 0440")
    key = path[len(mounts[0]["mountPath"].rstrip("/")) + 1:]
    items = secret.get("items")
    expect(key == "key.json" if not items else any(i.get("path") == key for i in items),
           f"{workload}: {path} is not the Secret's key.json")


def check_processor(root, objects):
    sets = objects.get("StatefulSet", {})
    if not expect(len(sets) == 1, f"expected one StatefulSet, got {sorted(sets)}"):
        return
    (name, sts), = sets.items()
    spec = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    w = f"StatefulSet/{name}"
    expect(spec["securityContext"].get("fsGroupChangePolicy") == "OnRootMismatch",
           f"{w}: fsGroupChangePolicy is not OnRootMismatch (a large state is chowned on every start)")
    (c,) = [c for c in spec["containers"] if c["name"] == "processor"]
    args = c.get("args", [])
    expect(args[:1] == ["run"], f"{w}: the processor does not `run`")
    expect("--statefulset" in args and args[args.index("--statefulset") + 1] == name,
           f"{w}: the instance count is not this StatefulSet's replicas (--statefulset {name})")
    env = env_map(c)
    # State on the claim, nowhere else.
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    expect(mounts.get("/var/lib/paydedup") in claims, f"{w}: /var/lib/paydedup is not on a volume claim")
    state_dir = env.get("PAYDEDUP_STATE_DIR", {}).get("value", "")
    expect(state_dir.startswith("/var/lib/paydedup/"), f"{w}: PAYDEDUP_STATE_DIR {state_dir!r} is not on the claim")
    expect("/tmp" in mounts and any(v["name"] == mounts["/tmp"] and "emptyDir" in v for v in spec.get("volumes", [])),
           f"{w}: /tmp is not an emptyDir")
    # Probes on the metrics port, which the processor listens on for every address.
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    addr = env.get("PAYDEDUP_METRICS_ADDR", {}).get("value", "")
    expect(addr == f"0.0.0.0:{ports.get('metrics')}", f"{w}: PAYDEDUP_METRICS_ADDR {addr!r} is not 0.0.0.0:<metrics port>")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        expect(get.get("path") == path and get.get("port") in ("metrics", ports.get("metrics")),
               f"{w}: {probe} is not GET {path} on the metrics port")
    ann = sts["spec"]["template"]["metadata"].get("annotations", {})
    expect(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(ports.get("metrics")),
           f"{w}: no prometheus.io scrape annotations for the metrics port")
    # The grace period outlasts the exit flush.
    give_up = env.get("PAYDEDUP_SINK_GIVE_UP_SECS", {}).get("value")
    flush = exit_flush_secs(root, None if give_up is None else seconds(give_up))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    expect(grace > flush, f"{w}: terminationGracePeriodSeconds {grace} does not outlast the exit flush ({flush} s)")
    # BigQuery by default, from the ConfigMap.
    expect(from_config_map(c, objects.get("ConfigMap", {}), "PAYDEDUP_SINK"),
           f"{w}: PAYDEDUP_SINK does not come from the ConfigMap")
    check_credentials(VARIANT[0], objects, w, spec, c)
    # RBAC: get on this StatefulSet, bound to the pod's account.
    sa = spec.get("serviceAccountName")
    expect(sa in objects.get("ServiceAccount", {}), f"{w}: ServiceAccount {sa} is not defined")
    roles = [r for r in objects.get("Role", {}).values()
             if any("statefulsets" in rule.get("resources", []) and "get" in rule.get("verbs", [])
                    and name in rule.get("resourceNames", []) and "apps" in rule.get("apiGroups", [])
                    for rule in r["rules"])]
    bound = [b for b in objects.get("RoleBinding", {}).values()
             if b["roleRef"]["kind"] == "Role" and b["roleRef"]["name"] in {r["metadata"]["name"] for r in roles}
             and any(s["kind"] == "ServiceAccount" and s["name"] == sa and s.get("namespace", NAMESPACE) == NAMESPACE
                     for s in b["subjects"])]
    expect(bound, f"{w}: no Role granting get on statefulsets/{name} bound to ServiceAccount {sa}")
    # A disruption budget for these pods.
    pdbs = [p for p in objects.get("PodDisruptionBudget", {}).values()
            if p["spec"].get("selector", {}).get("matchLabels", {}).items() <= labels.items()
            and p["spec"].get("selector", {}).get("matchLabels")]
    expect(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1,
           f"{w}: no PodDisruptionBudget with maxUnavailable 1 selecting its pods")
    # Scraped: Service → pods, ServiceMonitor → Service and its port.
    svc = objects.get("Service", {}).get(sts["spec"]["serviceName"])
    if expect(svc, f"{w}: its serviceName {sts['spec']['serviceName']} is not a Service"):
        expect(svc["spec"]["selector"].items() <= labels.items(), f"Service/{svc['metadata']['name']} does not select the processor's pods")
        svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
        expect(svc_ports.get("metrics", {}).get("targetPort") in ("metrics", ports.get("metrics")),
               f"Service/{svc['metadata']['name']}: no metrics port to the container's")
        monitors = list(objects.get("ServiceMonitor", {}).values())
        expect(any(m["spec"]["selector"].get("matchLabels", {}).items() <= svc["metadata"].get("labels", {}).items()
                   and any(e.get("port") in svc_ports for e in m["spec"]["endpoints"])
                   for m in monitors),
               "no ServiceMonitor selects the processor's Service and scrapes a port of it")


def check_jobs(objects):
    for name, job in objects.get("Job", {}).items():
        (c,) = job["spec"]["template"]["spec"]["containers"]
        if "simulator" in c["image"]:
            expect("--create-partitions" in c.get("args", []), f"Job/{name}: the simulator does not create the topic")
            expect(job["spec"].get("backoffLimit") == 0, f"Job/{name}: a retry would produce everything again")
    crons = objects.get("CronJob", {})
    expect(crons, "no reconcile CronJob")
    maps = objects.get("ConfigMap", {})
    processors = [s["spec"]["template"]["spec"]["containers"][0] for s in objects.get("StatefulSet", {}).values()]
    for name, cron in crons.items():
        w = f"CronJob/{name}"
        job = cron["spec"]["jobTemplate"]["spec"]
        spec = job["template"]["spec"]
        (c,) = spec["containers"]
        args = flags(c.get("args", []))
        expect(c.get("args", [])[:1] == ["reconcile"], f"{w}: does not run `reconcile`")
        expect(cron["spec"].get("suspend") is not True, f"{w}: suspended")
        # Scheduled mode: only what is settled, so a live stream cannot fail it.
        settle = args.get("--settle-secs")
        if expect(settle and re.fullmatch(r"\d+", settle),
                  f"{w}: not scheduled mode (--settle-secs SECS): the whole output fails on a live pipeline"):
            expect(int(settle) >= MIN_SETTLE_SECS,
                   f"{w}: --settle-secs {settle} is within the delivery delay the alerts allow ({MIN_SETTLE_SECS} s)")
        expect("--settled-before" not in args, f"{w}: --settled-before fixes the bound for every run")
        expect("--manifest" not in args, f"{w}: --manifest (a whole run's ground truth) in scheduled mode")
        interval = cron_interval(cron["spec"].get("schedule", ""))
        lookback = int(args.get("--lookback-secs", "86400"))
        if expect(interval, f"{w}: schedule {cron['spec'].get('schedule')!r} is not one this test reads (hourly or daily)"):
            expect(lookback >= 2 * interval,
                   f"{w}: --lookback-secs {lookback} is less than two schedule intervals ({interval} s): records can go unchecked")
        output = args.get("--output")
        expect(output in (None, "$(PAYDEDUP_SINK)"), f"{w}: --output {output} is not the processor's sink")
        # The processor's dataset and windows, from the same ConfigMap and nowhere else.
        for setting in sorted(SHARED_SETTINGS):
            mine = setting_source(c, maps, setting)
            for p in processors:
                expect(mine == setting_source(p, maps, setting) and (mine is None or mine[0] == "ConfigMap"),
                       f"{w}: {setting} is not the processor's, from the same ConfigMap")
        expect(cron["spec"].get("concurrencyPolicy") == "Forbid", f"{w}: runs may overlap")
        expect(job.get("backoffLimit") == 0, f"{w}: a mismatch is retried instead of failing the Job")
        expect(spec.get("restartPolicy") == "Never", f"{w}: restartPolicy is not Never")
        check_credentials(VARIANT[0], objects, w, spec, c)


def flags(args):
    """{--flag: value} of `args` (`--flag=value` or `--flag value`; a flag without a
    value maps to "")."""
    out = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            out[k] = v
        elif a.startswith("--"):
            nxt = str(args[i + 1]) if i + 1 < len(args) else ""
            if nxt and not nxt.startswith("--"):
                out[a] = nxt
                i += 1
            else:
                out[a] = ""
        i += 1
    return out


def cron_interval(schedule):
    """Seconds between runs of an hourly (`M * * * *`) or daily (`M H * * *`) schedule,
    else None."""
    f = schedule.split()
    if len(f) == 5 and f[2:] == ["*", "*", "*"] and f[0].isdigit():
        if f[1] == "*":
            return 3600
        if f[1].isdigit():
            return 86400
    return None


def check_docs(root, docs):
    """The failures of every check over `docs` (load()'s {file: [documents]}), for each
    choice of credentials."""
    FAILURES.clear()
    kustomization, components, resources = split(docs)
    check_kustomization(kustomization, components, resources)
    for variant, vdocs in variants(components, resources).items():
        VARIANT[0] = variant
        # The schemas of what a component changed (the rest is the same documents).
        validate_schemas(vdocs if vdocs is resources else changed(resources, vdocs))
        objects = by_kind(vdocs)
        check_namespaces(objects)
        check_hardening(objects)
        check_env(root, objects)
        check_processor(root, objects)
        check_jobs(objects)
    VARIANT[0] = None
    return list(FAILURES)


def changed(before, after):
    return {f: [d for d in items if d not in before.get(f, [])] for f, items in after.items()}


def sts_of(docs):
    return next(d for d in docs["processor.yaml"] if d["kind"] == "StatefulSet")


def processor_of(docs):
    return sts_of(docs)["spec"]["template"]["spec"]["containers"][0]


def cron_of(docs):
    return next(d for d in docs["reconcile.yaml"] if d["kind"] == "CronJob")


def drop_env(container, name):
    container["env"] = [e for e in container["env"] if e["name"] != name]


def reconcile_of(docs):
    return cron_of(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def set_flag(container, flag, value):
    """`flag`'s value in `container`'s args (value None: the flag removed)."""
    args = [a for a in container["args"] if not str(a).startswith(flag + "=")]
    if value is not None:
        args.append(f"{flag}={value}")
    container["args"] = args


def key_patch(docs, kind):
    """The key-secret component's patch of `kind`, parsed; edit it, then store_patches()."""
    component = docs["key-secret/kustomization.yaml"][0]
    patches = [yaml.safe_load(p["patch"]) for p in component["patches"]]
    return component, patches, next(p for p in patches if p["kind"] == kind)


def store_patches(component, patches):
    for p, parsed in zip(component["patches"], patches):
        p["patch"] = yaml.safe_dump(parsed)


def edit_key_patch(kind, edit):
    def mutate(docs):
        component, patches, patch = key_patch(docs, kind)
        edit(patch)
        store_patches(component, patches)
    return mutate


def patched_container(patch):
    spec = patch["spec"]["template"]["spec"] if patch["kind"] == "StatefulSet" else \
        patch["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


# Edits that must each fail a check: the checks above are only worth something if a
# manifest that loses what they guard does not pass.
MUTANTS = {
    "root filesystem writable": lambda d: processor_of(d)["securityContext"].pop("readOnlyRootFilesystem"),
    "runAsNonRoot removed": lambda d: sts_of(d)["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
    "capabilities kept": lambda d: processor_of(d)["securityContext"].pop("capabilities"),
    "seccomp unconfined": lambda d: sts_of(d)["spec"]["template"]["spec"]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}),
    "no fsGroup": lambda d: sts_of(d)["spec"]["template"]["spec"]["securityContext"].pop("fsGroup"),
    "reconcile may escalate": lambda d: cron_of(d)["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
    "no disruption budget": lambda d: d.__setitem__(
        "processor.yaml", [x for x in d["processor.yaml"] if x["kind"] != "PodDisruptionBudget"]),
    "grace shorter than the flush": lambda d: sts_of(d)["spec"]["template"]["spec"].update(
        terminationGracePeriodSeconds=300),
    "longer give-up, same grace": lambda d: next(
        e for e in processor_of(d)["env"] if e["name"] == "PAYDEDUP_SINK_GIVE_UP_SECS").update(value="600"),
    "misspelt variable": lambda d: processor_of(d)["env"].append({"name": "PAYDEDUP_SINK_GIVEUP_SECS", "value": "1"}),
    "misspelt field": lambda d: sts_of(d)["spec"]["template"]["spec"]["securityContext"].update(fsGroupChangePolcy="Always"),
    "misspelt kind": lambda d: sts_of(d).update(kind="Statefulset"),
    "ServiceMonitor field misspelt": lambda d: d["monitoring.yaml"][0]["spec"]["endpoints"][0].update(intervall="15s"),
    "fixed instance count": lambda d: processor_of(d).update(args=["run", "--instance-count", "2"]),
    "Role for another StatefulSet": lambda d: next(x for x in d["processor.yaml"] if x["kind"] == "Role")[
        "rules"][0].update(resourceNames=["other"]),
    "readiness on /healthz": lambda d: processor_of(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
    "file sink": lambda d: next(x for x in d["config.yaml"] if x["kind"] == "ConfigMap")["data"].update(
        PAYDEDUP_SINK="file:/var/lib/paydedup/output"),
    "key by flag, not ADC": edit_key_patch("StatefulSet", lambda p: patched_container(p)[1]["env"].append(
        {"name": "PAYDEDUP_BIGQUERY_CREDENTIALS", "value": "/var/run/secrets/paydedup/bigquery/key.json"})),
    "key Secret without the variable": edit_key_patch("CronJob", lambda p: patched_container(p)[1].pop("env")),
    "optional key Secret": edit_key_patch("StatefulSet", lambda p: patched_container(p)[0]["volumes"][0][
        "secret"].update(optional=True)),
    "key not read-only": edit_key_patch("StatefulSet", lambda p: patched_container(p)[1]["volumeMounts"][0].pop(
        "readOnly")),
    "key world-readable": edit_key_patch("CronJob", lambda p: patched_container(p)[0]["volumes"][0][
        "secret"].update(defaultMode=0o644)),
    "variable naming a missing key": lambda d: processor_of(d)["env"].append(
        {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/secrets/paydedup/bigquery/key.json"}),
    "no workload identity": lambda d: next(x for x in d["reconcile.yaml"] if x["kind"] == "ServiceAccount")[
        "metadata"].pop("annotations"),
    "component not applied": lambda d: d["key-secret/kustomization.yaml"][0].update(kind="Kustomization"),
    "misspelt ConfigMap key": lambda d: next(x for x in d["config.yaml"] if x["kind"] == "ConfigMap")["data"].update(
        PAYDEDUP_SINKS="bigquery:p.d"),
    "reconcile suspended": lambda d: cron_of(d)["spec"].update(suspend=True),
    "reconcile over the whole output": lambda d: set_flag(reconcile_of(d), "--settle-secs", None),
    "settle margin under the delivery delay": lambda d: set_flag(reconcile_of(d), "--settle-secs", "120"),
    "lookback of one run": lambda d: set_flag(reconcile_of(d), "--lookback-secs", "3600"),
    "reconcile with a fixed bound": lambda d: set_flag(reconcile_of(d), "--settled-before", "2026-01-01T00:00:00Z"),
    "processor's window not reconcile's": lambda d: processor_of(d)["env"].append(
        {"name": "PAYDEDUP_WINDOW_SECS", "value": "30"}),
    "reconcile's sink not the processor's": lambda d: reconcile_of(d).update(
        env=[{"name": "PAYDEDUP_SINK", "value": "bigquery:other.dataset"}]),
    "state off the claim": lambda d: next(
        e for e in processor_of(d)["env"] if e["name"] == "PAYDEDUP_STATE_DIR").update(value="/data/state"),
    "outside the namespace": lambda d: d["reconcile.yaml"][0]["metadata"].update(namespace="default"),
    "file not in kustomization": lambda d: d.__setitem__("extra.yaml", d["namespace.yaml"]),
    "reconcile retried": lambda d: cron_of(d)["spec"]["jobTemplate"]["spec"].update(backoffLimit=3),
}


def mutants(root):
    docs = load(root)
    survived = []
    for name, mutate in MUTANTS.items():
        mutant = copy.deepcopy(docs)
        mutate(mutant)
        if not check_docs(root, mutant):
            survived.append(name)
    FAILURES.clear()
    for name in survived:
        print(f"FAIL the checks pass a manifest with this edit: {name}", file=sys.stderr)
    if not survived:
        print(f"k8s/: each of {len(MUTANTS)} harmful edits fails a check")
    return 1 if survived else 0


def kustomize_matches(root, docs):
    """Where kubectl is installed: `kubectl kustomize` renders k8s/ without and with each
    component as this test reads it (the components applied by apply_component, the
    images as kustomization.yaml sets them). Returns a note for the output."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return "no kubectl: the components' patches were applied by this test alone"
    kustomization, components, resources = split(docs)
    rendered = variants(components, resources)
    for variant, component in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(root, "k8s"), os.path.join(tmp, "k8s"))
            k = copy.deepcopy(kustomization)
            k["components"] = [component] if component else []
            with open(os.path.join(tmp, "k8s", "kustomization.yaml"), "w") as f:
                yaml.safe_dump(k, f)
            out = subprocess.run([kubectl, "kustomize", os.path.join(tmp, "k8s")],
                                 capture_output=True, text=True)
        if not expect(out.returncode == 0, f"kubectl kustomize ({variant}): {out.stderr.strip()}"):
            continue
        theirs = {(d["kind"], d["metadata"]["name"]): unordered(d) for d in yaml.safe_load_all(out.stdout) if d}
        ours = {(d["kind"], d["metadata"]["name"]): unordered(with_images(d, kustomization.get("images", [])))
                for items in rendered.get(variant, {}).values() for d in items}
        expect(sorted(theirs) == sorted(ours),
               f"kubectl kustomize ({variant}) renders {sorted(theirs)}, this test reads {sorted(ours)}")
        for key in sorted(set(theirs) & set(ours)):
            if theirs[key] != ours[key]:
                a = yaml.safe_dump(ours[key], sort_keys=True).splitlines()
                b = yaml.safe_dump(theirs[key], sort_keys=True).splitlines()
                diff = "\n".join(difflib.unified_diff(a, b, "this test", "kubectl kustomize", lineterm="", n=2))
                fail(f"kubectl kustomize ({variant}) renders {key[0]}/{key[1]} differently:\n{diff}")
    return f"kubectl kustomize renders {' and '.join(VARIANTS)} as checked"


def unordered(doc):
    """`doc` with the lists a patch merges by key sorted by it: where a merged item lands
    differs between kustomize releases (v5.5 puts new ones first) and means nothing to
    the API server for these lists (no env entry here refers to another)."""
    if isinstance(doc, dict):
        return {k: sorted((unordered(i) for i in v), key=lambda i: str(i.get(MERGE_KEYS[k])))
                if k in MERGE_KEYS and isinstance(v, list) and all(isinstance(i, dict) for i in v)
                else unordered(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [unordered(i) for i in doc]
    return doc


def with_images(doc, images):
    """`doc` with kustomize's `images:` transformation (newName, newTag) applied."""
    doc = copy.deepcopy(doc)
    spec = {"StatefulSet": lambda d: d["spec"]["template"]["spec"], "Job": lambda d: d["spec"]["template"]["spec"],
            "CronJob": lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]}.get(doc["kind"])
    if spec:
        for c in spec(doc).get("initContainers", []) + spec(doc)["containers"]:
            name, _, tag = c["image"].partition(":")
            for i in images:
                if i["name"] == name:
                    c["image"] = f"{i.get('newName', name)}:{i.get('newTag', tag)}"
    return doc


def check(root):
    docs = load(root)
    check_docs(root, docs)
    note = kustomize_matches(root, docs)
    count = sum(len(d) for f, d in docs.items() if f != "kustomization.yaml" and "/" not in f)
    if FAILURES:
        for f in FAILURES:
            print(f"FAIL {f}", file=sys.stderr)
        print(f"k8s/: {len(FAILURES)} failures", file=sys.stderr)
        return 1
    print(f"k8s/: {count} objects valid against Kubernetes {', '.join(VERSIONS)} (strict) and checked, "
          f"with {' and with '.join(VARIANTS)}; {note}")
    return 0


# --- the Pod for podman kube play ------------------------------------------------------

def pod_objects(root, images, host_port):
    """The processor's pod template as a Pod, plus what it needs to run: podman 4.3 plays
    Pods, Deployments, PersistentVolumeClaims and ConfigMaps, not StatefulSets, Jobs or
    CronJobs.

    What changes, and why:
      - images: the localhost dev tags scripts/build-images.sh builds;
      - `--statefulset NAME` → `--instance-index 0 --instance-count 1`: no API server;
      - the sink: the emulator's dataset, no credentials (k8s/ as written: workload
        identity, nothing mounted; the ServiceAccount goes);
      - POD_NAMESPACE: a literal (podman refuses the fieldRef metadata.namespace);
      - the livenessProbe goes: podman 4.3 turns an httpGet probe into a HEALTHCHECK
        `curl -f http://localhost:PORT/PATH` run inside the container, and the image
        has no curl (the timer that would run it needs systemd, absent here too);
        readinessProbe podman ignores. The test asks /healthz and /readyz itself,
        through hostPort;
      - the state claim: a PersistentVolumeClaim (a podman named volume);
      - restartPolicy OnFailure: the simulator runs once, and the processor, started
        before the simulator has created the topic, exits and is started again;
      - a broker (tansu), the BigQuery emulator and the simulator (the Job's pod
        template's container, fewer records, no rate) in the same pod, on localhost.
    The securityContext, the other variables, mounts, ports and resources are kept.
    Returns the ConfigMap, the claims and the Pod.
    """
    objects = by_kind(split(load(root))[2])
    (sts,) = objects["StatefulSet"].values()
    template = copy.deepcopy(sts["spec"]["template"])
    spec = template["spec"]
    (proc,) = spec["containers"]
    proc["image"] = images["processor"]
    args = proc["args"]
    i = args.index("--statefulset")
    proc["args"] = args[:i] + ["--instance-index", "0", "--instance-count", "1"] + args[i + 2:]
    env = []
    for e in proc["env"]:
        if e["name"] == "POD_NAMESPACE":
            e = {"name": "POD_NAMESPACE", "value": NAMESPACE}
        env.append(e)
    env += [{"name": k, "value": v} for k, v in BIGQUERY_EMULATOR.items()]
    env.append({"name": "PAYDEDUP_LOG_FORMAT", "value": "text"})
    proc["env"] = env
    proc.pop("livenessProbe")
    for p in proc["ports"]:
        if p["name"] == "metrics":
            p["hostPort"] = host_port
            p["hostIP"] = "127.0.0.1"
    for t in sts["spec"]["volumeClaimTemplates"]:
        spec["volumes"].append({"name": t["metadata"]["name"],
                                "persistentVolumeClaim": {"claimName": f"{POD}-{t['metadata']['name']}"}})
    (job,) = [j for j in objects["Job"].values() if "simulator" in j["spec"]["template"]["spec"]["containers"][0]["image"]]
    sim_spec = job["spec"]["template"]["spec"]
    (sim,) = copy.deepcopy(sim_spec["containers"])
    sim["image"] = images["simulator"]
    a = sim["args"]
    a[a.index("--count") + 1] = str(RECORDS)
    if "--rate" in a:
        j = a.index("--rate")
        del a[j:j + 2]
    for v in sim_spec.get("volumes", []):
        for m in sim.get("volumeMounts", []):
            if m["name"] == v["name"]:
                m["name"] = "simulator-" + v["name"]
                spec["volumes"].append(dict(v, name=m["name"]))
    # The fixtures' images (deploy/images/) listen on 0.0.0.0 and keep their data in an
    # image VOLUME owned by the pod's user; the broker is told to advertise the pod's
    # localhost instead of the compose service name.
    broker = {"name": "broker", "image": images["tansu"],
              "args": ["--advertised-listener-url", "tcp://127.0.0.1:9092"]}
    bigquery = {"name": "bigquery", "image": images["bqemulator"]}
    spec["containers"] = [broker, bigquery, sim, proc]
    spec["restartPolicy"] = "OnFailure"
    spec.pop("serviceAccountName", None)
    spec.pop("affinity", None)
    config = copy.deepcopy(objects["ConfigMap"]["paydedup"])
    config["metadata"].pop("namespace", None)
    config["data"]["PAYDEDUP_BROKERS"] = "127.0.0.1:9092"
    config["data"]["PAYDEDUP_SINK"] = f"bigquery:{DATASET}"
    claims = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": f"{POD}-{t['metadata']['name']}"},
               "spec": t["spec"]} for t in sts["spec"]["volumeClaimTemplates"]]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": POD, "labels": template["metadata"]["labels"],
                        "annotations": template["metadata"].get("annotations", {})},
           "spec": spec}
    return [config] + claims + [pod]


def pod(root, out, images, host_port):
    with open(out, "w") as f:
        yaml.safe_dump_all(pod_objects(root, images, host_port), f, sort_keys=False)


def run_args(spec, container, config, secrets=None):
    """`podman run` options and arguments for `container` of pod `spec`, one a line: its
    user, hardening, environment (ConfigMap references and envFrom resolved from
    `config`, $(VAR) in arguments expanded as the kubelet does), mounts (a claim's
    podman volume, a tmpfs for an emptyDir, for a Secret the directory `secrets` maps
    its name to, read-only), IMAGE in place of the image."""
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    env = {}
    for src in container.get("envFrom", []):
        assert src["configMapRef"]["name"] == config["metadata"]["name"], src
        env.update(config["data"])
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        env[e["name"]] = config["data"][ref["key"]] if ref else e["value"]
    out = [f"--user={pod_sc['runAsUser']}:{pod_sc['runAsGroup']}"]
    if sc.get("readOnlyRootFilesystem"):
        out.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        out.append("--security-opt=no-new-privileges")
    out += [f"--cap-drop={cap}" for cap in sc.get("capabilities", {}).get("drop", [])]
    out += [f"--env={k}={v}" for k, v in env.items()]
    kinds = {v["name"]: v for v in spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        v = kinds[m["name"]]
        if "emptyDir" in v:
            out.append(f"--tmpfs={m['mountPath']}")
        elif "persistentVolumeClaim" in v:
            out.append(f"--volume={v['persistentVolumeClaim']['claimName']}:{m['mountPath']}")
        elif "secret" in v and v["secret"]["secretName"] in (secrets or {}):
            out.append(f"--volume={secrets[v['secret']['secretName']]}:{m['mountPath']}:ro")
        else:
            raise SystemExit(f"no podman equivalent here for volume {m['name']}")
    out.append("IMAGE")
    out += [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container.get("args", [])]
    return out


def override(args, extra):
    """`args` with each --FLAG=VALUE of `extra` in place of that flag (appended if absent;
    --FLAG= removes it)."""
    args = list(args)
    for e in extra:
        flag, _, value = e.partition("=")
        kept = []
        skip = False
        for a in args:
            if skip:
                skip = False
                continue
            if a == flag:
                skip = True
                continue
            if not a.startswith(flag + "="):
                kept.append(a)
        args = kept + ([e] if value else [])
    return args


def podman_run(root, which, extra):
    """`which`: `processor` (the pod's processor container, its args followed by
    `extra`), `reconcile` (the CronJob's container, k8s/ as written: the sink pointed
    at the pod's emulator like the processor's, no credentials) or `reconcile-key
    SECRETS_DIR` (the CronJob's container with the key-secret component: the emulator's
    endpoints but credentials from the key, Secret S mounted from SECRETS_DIR/S); for
    reconcile, each --FLAG=VALUE of `extra` replaces that flag (override())."""
    config, *_, pod = pod_objects(root, {n: "IMAGE" for n in ("processor", "simulator", "tansu", "bqemulator")}, 0)
    proc = next(c for c in pod["spec"]["containers"] if c["name"] == "processor")
    if which == "processor":
        proc["args"] += extra
        return run_args(pod["spec"], proc, config)
    _, components, resources = split(load(root))
    secrets = None
    if which == "reconcile-key":
        secrets_dir, *extra = extra
        resources = apply_component(VARIANTS["key Secret"], components[VARIANTS["key Secret"]], resources)
    objects = by_kind(resources)
    (cron,) = objects["CronJob"].values()
    spec = copy.deepcopy(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    (c,) = spec["containers"]
    emulator = {k: v for k, v in BIGQUERY_EMULATOR.items()
                if which == "reconcile" or k != "PAYDEDUP_BIGQUERY_NO_AUTH"}
    c["env"] = c.get("env", []) + [{"name": k, "value": v} for k, v in emulator.items()] + \
        [{"name": "PAYDEDUP_LOG_FORMAT", "value": "text"}]
    if which == "reconcile-key":
        secrets = {v["secret"]["secretName"]: os.path.join(secrets_dir, v["secret"]["secretName"])
                   for v in spec["volumes"] if "secret" in v}
    c["args"] = override(c["args"], extra)
    return run_args(spec, c, config, secrets)


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(check(sys.argv[2]))
    if sys.argv[1:2] == ["mutants"]:
        sys.exit(mutants(sys.argv[2]))
    if sys.argv[1:2] == ["pod"]:
        images = dict(kv.split("=", 1) for kv in sys.argv[5:])
        pod(sys.argv[2], sys.argv[3], images, int(sys.argv[4]))
        sys.exit(0)
    if sys.argv[1:2] == ["run-args"]:
        print("\n".join(podman_run(sys.argv[2], sys.argv[3], sys.argv[4:])))
        sys.exit(0)
    sys.exit(__doc__)
