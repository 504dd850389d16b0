"""Checks of k8s/, for tests/deploy/test_k8s.sh (run with the kubernetes-validate venv).

  python k8s_manifests.py check ROOT
      every manifest against the Kubernetes API schemas (kubernetes-validate, strict,
      several versions), the ServiceMonitor against its own schema below, and the
      properties the manifests promise (hardening, probes, grace period, wiring).
  python k8s_manifests.py mutants ROOT
      that each of a list of harmful edits to the manifests fails `check`.
  python k8s_manifests.py pod ROOT OUT.yaml HOST_PORT processor=IMG simulator=IMG tansu=IMG bqemulator=IMG
      the processor's StatefulSet pod template as a Pod podman can play, with a broker,
      the BigQuery emulator and the simulator beside it (see pod() for what changes).
  python k8s_manifests.py run-args ROOT processor|reconcile [ARG ...]
      that pod's processor container, or the reconcile CronJob's, as `podman run`
      arguments (IMAGE in place of the image), to run in the pod.

Every check names what broke; `check` exits non-zero on any.
"""

import copy
import glob
import os
import re
import sys

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

FAILURES = []

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
    FAILURES.append(message)


def expect(condition, message):
    if not condition:
        fail(message)
    return condition


def load(root):
    """{file name: [documents]} of k8s/*.yaml."""
    docs = {}
    for path in sorted(glob.glob(os.path.join(root, "k8s", "*.yaml"))):
        with open(path) as f:
            docs[os.path.basename(path)] = [d for d in yaml.safe_load_all(f) if d]
    return docs


def seconds(value):
    return int(re.fullmatch(r"(\d+)", str(value)).group(1))


# --- what the Rust code reads -------------------------------------------------------

def env_names(root, *dirs):
    """The PAYDEDUP_* variables the code under `dirs` declares (`env = "…"`)."""
    names = set()
    for d in dirs:
        for path in glob.glob(os.path.join(root, d, "**", "*.rs"), recursive=True):
            with open(path) as f:
                names.update(re.findall(r'env\s*=\s*"(PAYDEDUP_[A-Z0-9_]+)"', f.read()))
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


def check_kustomization(docs):
    (k,) = docs.pop("kustomization.yaml", [None])
    if not expect(k, "k8s/kustomization.yaml is missing"):
        return
    expect(k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization",
           "kustomization.yaml: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    expect(k.get("namespace") == NAMESPACE, f"kustomization.yaml: namespace is not {NAMESPACE}")
    expect(sorted(k.get("resources", [])) == sorted(docs),
           f"kustomization.yaml lists {sorted(k.get('resources', []))}, k8s/ holds {sorted(docs)}")
    unknown = set(k) - {"apiVersion", "kind", "namespace", "resources", "images"}
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
    processor_env = env_names(root, "crates/processor/src")
    simulator_env = env_names(root, "simulator/src")
    # Read by code outside clap: the Kubernetes client (crates/processor/src/topology),
    # and the Application Default Credentials the BigQuery client is gaining.
    other = {"POD_NAMESPACE", "GOOGLE_APPLICATION_CREDENTIALS"}
    maps = objects.get("ConfigMap", {})
    for workload, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            known = (simulator_env if "simulator" in c["image"] else processor_env) | other
            for name, e in env_map(c).items():
                expect(name in known, f"{workload}: {name} is not a variable {c['image']} reads")
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    expect(ref["key"] in maps.get(ref["name"], {}).get("data", {}),
                           f"{workload}: {name} refers to ConfigMap {ref['name']} key {ref['key']}, which is not there")
            for arg in c.get("args", []):
                for var in re.findall(r"\$\((\w+)\)", str(arg)):
                    expect(var in env_map(c), f"{workload}: argument {arg} expands {var}, which the container does not define")
    for name, cm in maps.items():
        sink = cm.get("data", {}).get("PAYDEDUP_SINK")
        if sink is not None:
            expect(re.fullmatch(r"bigquery:[\w-]+\.\w+", sink), f"ConfigMap {name}: PAYDEDUP_SINK {sink} is not bigquery:PROJECT.DATASET")


def credentials_are_mounted(workload, spec, container):
    env = env_map(container)
    path = env.get("PAYDEDUP_BIGQUERY_CREDENTIALS", {}).get("value")
    if not expect(path, f"{workload}: no PAYDEDUP_BIGQUERY_CREDENTIALS"):
        return
    expect(env.get("GOOGLE_APPLICATION_CREDENTIALS", {}).get("value") == path,
           f"{workload}: GOOGLE_APPLICATION_CREDENTIALS does not name the same key file")
    secrets = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
    expect(any(m["name"] in secrets and m.get("readOnly") and path.startswith(m["mountPath"].rstrip("/") + "/")
               for m in container.get("volumeMounts", [])),
           f"{workload}: {path} is not on a read-only Secret mount")


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
    ref = env.get("PAYDEDUP_SINK", {}).get("valueFrom", {}).get("configMapKeyRef")
    expect(ref, f"{w}: PAYDEDUP_SINK does not come from the ConfigMap")
    credentials_are_mounted(w, spec, c)
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
    for name, cron in crons.items():
        w = f"CronJob/{name}"
        job = cron["spec"]["jobTemplate"]["spec"]
        spec = job["template"]["spec"]
        (c,) = spec["containers"]
        args = c.get("args", [])
        expect(args[:1] == ["reconcile"] and "--output" in args, f"{w}: not `reconcile --output …`")
        expect(cron["spec"].get("concurrencyPolicy") == "Forbid", f"{w}: runs may overlap")
        expect(job.get("backoffLimit") == 0, f"{w}: a mismatch is retried instead of failing the Job")
        expect(spec.get("restartPolicy") == "Never", f"{w}: restartPolicy is not Never")
        credentials_are_mounted(w, spec, c)


def check_docs(root, docs):
    """The failures of every check over `docs` ({file: [documents]})."""
    FAILURES.clear()
    docs = copy.deepcopy(docs)
    check_kustomization(docs)
    validate_schemas(docs)
    objects = by_kind(docs)
    check_namespaces(objects)
    check_hardening(objects)
    check_env(root, objects)
    check_processor(root, objects)
    check_jobs(objects)
    return list(FAILURES)


def sts_of(docs):
    return next(d for d in docs["processor.yaml"] if d["kind"] == "StatefulSet")


def processor_of(docs):
    return sts_of(docs)["spec"]["template"]["spec"]["containers"][0]


def cron_of(docs):
    return next(d for d in docs["reconcile.yaml"] if d["kind"] == "CronJob")


def drop_env(container, name):
    container["env"] = [e for e in container["env"] if e["name"] != name]


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
    "no key file": lambda d: drop_env(processor_of(d), "PAYDEDUP_BIGQUERY_CREDENTIALS"),
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


def check(root):
    docs = load(root)
    check_docs(root, docs)
    count = sum(len(d) for f, d in docs.items() if f != "kustomization.yaml")
    if FAILURES:
        for f in FAILURES:
            print(f"FAIL {f}", file=sys.stderr)
        print(f"k8s/: {len(FAILURES)} failures", file=sys.stderr)
        return 1
    print(f"k8s/: {count} objects valid against Kubernetes {', '.join(VERSIONS)} (strict) and checked")
    return 0


# --- the Pod for podman kube play ------------------------------------------------------

def pod_objects(root, images, host_port):
    """The processor's pod template as a Pod, plus what it needs to run: podman 4.3 plays
    Pods, Deployments, PersistentVolumeClaims and ConfigMaps, not StatefulSets, Jobs or
    CronJobs.

    What changes, and why:
      - images: the localhost dev tags scripts/build-images.sh builds;
      - `--statefulset NAME` → `--instance-index 0 --instance-count 1`: no API server;
      - the sink: the emulator's dataset, no credentials (the Secret mount goes);
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
    objects = by_kind({k: v for k, v in load(root).items() if k != "kustomization.yaml"})
    (sts,) = objects["StatefulSet"].values()
    template = copy.deepcopy(sts["spec"]["template"])
    spec = template["spec"]
    (proc,) = spec["containers"]
    proc["image"] = images["processor"]
    args = proc["args"]
    i = args.index("--statefulset")
    proc["args"] = args[:i] + ["--instance-index", "0", "--instance-count", "1"] + args[i + 2:]
    secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in secret_volumes]
    proc["volumeMounts"] = [m for m in proc["volumeMounts"] if m["name"] not in secret_volumes]
    env = []
    for e in proc["env"]:
        if e["name"] in ("PAYDEDUP_BIGQUERY_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS"):
            continue
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


def run_args(spec, container, config):
    """`podman run` options and arguments for `container` of pod `spec`, one a line: its
    user, hardening, environment (ConfigMap references resolved from `config`, $(VAR)
    in arguments expanded as the kubelet does), mounts (a claim's podman volume, a tmpfs
    for an emptyDir), IMAGE in place of the image."""
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    env = {}
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
        else:
            raise SystemExit(f"no podman equivalent here for volume {m['name']}")
    out.append("IMAGE")
    out += [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container.get("args", [])]
    return out


def podman_run(root, which, extra):
    """`which`: `processor` (the pod's processor container, its args followed by
    `extra`) or `reconcile` (the CronJob's container, the sink pointed at the pod's
    emulator like the processor's)."""
    config, *_, pod = pod_objects(root, {n: "IMAGE" for n in ("processor", "simulator", "tansu", "bqemulator")}, 0)
    proc = next(c for c in pod["spec"]["containers"] if c["name"] == "processor")
    if which == "processor":
        proc["args"] += extra
        return run_args(pod["spec"], proc, config)
    objects = by_kind({k: v for k, v in load(root).items() if k != "kustomization.yaml"})
    (cron,) = objects["CronJob"].values()
    spec = copy.deepcopy(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    (c,) = spec["containers"]
    secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in secret_volumes]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] not in secret_volumes]
    c["env"] = [e for e in c["env"] if not e["name"].endswith("CREDENTIALS")]
    c["env"] += [e for e in proc["env"] if e["name"].startswith("PAYDEDUP_BIGQUERY_")]
    return run_args(spec, c, config)


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
