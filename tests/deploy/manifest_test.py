#!/usr/bin/env python3
"""Checks Strata's Kubernetes deployment (deploy/kubernetes), image
(deploy/Dockerfile) and containerd fragment (deploy/containerd) without a
cluster: parses every manifest and checks the fields that have to agree with
the strata binary, with kubelet, with containerd and with each other
(sockets, mounts, RBAC, secrets, images).

    python3 tests/deploy/manifest_test.py [DEPLOY_DIR]

DEPLOY_DIR defaults to the deploy/ folder of this repository. Needs PyYAML
(Debian: python3-yaml) and Python 3.11+ for tomllib (Debian 12's python3;
older ones skip the containerd checks unless tomli is installed). Every
failure names the file, the object and the field.
"""

import json
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY_DIR = os.path.abspath(os.path.join(HERE, "..", "..", "deploy"))

DRIVER = "csi.strata.io"
STRATA_BINARY = "/usr/local/bin/strata"
KUBELET_DIR = "/var/lib/kubelet"
REGISTRATION_PATH = "/var/lib/kubelet/plugins/csi.strata.io/csi.sock"
REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
SIDECAR_REGISTRY = "registry.k8s.io/sig-storage/"

# Origins a StorageClass can provision volumes under (a directory or prefix
# per volume), and origins a single volume (static PV, inline) can be.
CLASS_SCHEMES = ("file", "s3")
VOLUME_SCHEMES = ("file", "s3", "http", "https", "oci")
# Keys of a volume context (PV volumeAttributes, inline volumeAttributes);
# the node rejects any other key outside csi.storage.k8s.io/ (csi/volume_spec.h).
VOLUME_OPTIONS = {"origin", "chunkSize", "attrTTL", "readOnly"}
CLASS_PARAMETERS = VOLUME_OPTIONS | {"subPathFrom", "onDelete"}
SECRET_KINDS = ("provisioner", "controller-publish", "node-stage", "node-publish",
                "controller-expand", "node-expand")
# Which secrets are read by the controller's sidecars (the rest by kubelet).
CONTROLLER_SECRET_KINDS = ("provisioner", "controller-publish", "controller-expand")
S3_SECRET_KEYS = ("access_key_id", "secret_access_key")
# Mount flags the driver accepts (csi/request_checks.cc CheckCapability).
MOUNT_OPTIONS = {"ro", "rw", "nosuid", "nodev", "noexec", "noatime", "relatime"}

WORKLOAD_KINDS = ("Pod", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job")

# Files strata node reads from --peer-tls-dir (a kubernetes.io/tls Secret
# with ca.crt, as cert-manager writes it), and the name a peer's
# certificate must carry as a DNS SAN when --peer-tls-name is not given.
PEER_TLS_FILES = ("ca.crt", "tls.crt", "tls.key")
DEFAULT_PEER_TLS_NAME = "strata-peer"

# containerd (deploy/containerd): the fragment that makes strata node the
# CRI plugin's snapshotter, through a proxy plugin of this name.
CONTAINERD_FRAGMENT = os.path.join("containerd", "strata-snapshotter.toml")
SNAPSHOTTER_NAME = "strata"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"


# --- loading -----------------------------------------------------------------


class Doc:
    """One YAML document of one manifest file."""

    def __init__(self, path, index, obj):
        self.path = path
        self.index = index
        self.obj = obj

    @property
    def kind(self):
        return self.obj.get("kind") if isinstance(self.obj, dict) else None

    @property
    def name(self):
        return get(self.obj, "metadata.name")

    @property
    def namespace(self):
        return get(self.obj, "metadata.namespace")

    def where(self, field=None):
        rel = os.path.relpath(self.path, os.path.dirname(DEPLOY_DIR))
        what = "%s %s" % (self.kind or "?", "/".join(x for x in (self.namespace, self.name) if x) or "?")
        out = "%s (document %d, %s)" % (rel, self.index + 1, what)
        return out + (": " + field if field else "")


def show(value):
    """A value as it would be written in YAML/JSON (true, null, "x")."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def get(obj, dotted, default=None):
    """obj["a"]["b"] for "a.b"; default where a level is missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return default
        obj = obj[part]
    return obj


def load_manifests(root):
    docs, errors = [], []
    kube = os.path.join(root, "kubernetes")
    for dirpath, dirnames, filenames in os.walk(kube):
        dirnames.sort()
        for f in sorted(filenames):
            if not f.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, f)
            try:
                with open(path) as fh:
                    objs = list(yaml.safe_load_all(fh))
            except yaml.YAMLError as e:
                errors.append("%s: not valid YAML: %s" % (path, e))
                continue
            for i, obj in enumerate(objs):
                if obj is not None:
                    docs.append(Doc(path, i, obj))
    return docs, errors


# --- pod specs, containers, arguments ----------------------------------------


def pod_spec(doc):
    if doc.kind == "Pod":
        return doc.obj.get("spec") or {}
    if doc.kind in WORKLOAD_KINDS:
        return get(doc.obj, "spec.template.spec", {}) or {}
    return None


def containers(spec):
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def argv(container):
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def flag(container, name):
    """Value of --name=V or --name V in the container's command line; True
    for a bare --name; None when absent."""
    words = argv(container)
    for i, w in enumerate(words):
        if w == name:
            nxt = words[i + 1] if i + 1 < len(words) else None
            return nxt if nxt is not None and not nxt.startswith("-") else True
        if w.startswith(name + "="):
            return w[len(name) + 1:]
    return None


def strata_subcommand(container):
    """'node', 'controller', ... for a container running the strata binary."""
    words = argv(container)
    if not words:
        return None
    if words[0] == STRATA_BINARY or words[0] == "strata":
        words = words[1:]
    elif not str(container.get("image", "")).split("/")[-1].startswith("strata:"):
        return None
    for w in words:
        if not w.startswith("-"):
            return w
    return None


def pod_labels(doc):
    if doc.kind == "Pod":
        return get(doc.obj, "metadata.labels", {}) or {}
    return get(doc.obj, "spec.template.metadata.labels", {}) or {}


def selects(selector, labels):
    """A Service's selector (a plain map) picks pods with these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_of_dns_name(name, namespace):
    """(service, namespace) of a Service's DNS name: NAME, NAME.NAMESPACE,
    NAME.NAMESPACE.svc or NAME.NAMESPACE.svc.CLUSTER-DOMAIN (a bare NAME is
    in `namespace`); None if it is no such name."""
    parts = name.split(".")
    if not all(parts):
        return None
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or parts[2] == "svc":
        return parts[0], parts[1]
    return None


def volumes_by_name(spec):
    return {v.get("name"): v for v in spec.get("volumes") or []}


def resolve_path(spec, container, path):
    """(volume, path inside the volume) of a path in a container, from its
    volumeMounts (longest mountPath prefix); (None, path) if on no volume."""
    best = None
    for m in container.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None, path
    mp, m = best
    rel = path[len(mp):].lstrip("/")
    if m.get("subPath"):
        rel = os.path.join(m["subPath"], rel) if rel else m["subPath"]
    return volumes_by_name(spec).get(m.get("name")), rel


def unix_path(endpoint):
    if isinstance(endpoint, str) and endpoint.startswith("unix://"):
        return endpoint[len("unix://"):]
    return endpoint if isinstance(endpoint, str) and endpoint.startswith("/") else None


def container_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def find_mount(container, mount_path):
    for m in container.get("volumeMounts") or []:
        if m.get("mountPath", "").rstrip("/") == mount_path.rstrip("/"):
            return m
    return None


def mount_holding(container, path):
    """The volumeMount whose directory holds `path` (or is it), if any."""
    for m in container.get("volumeMounts") or []:
        root = m.get("mountPath", "").rstrip("/")
        if root and (path.rstrip("/") == root or path.startswith(root + "/")):
            return m
    return None


def parse_size(text):
    """Bytes of "4MiB", "2G", "1048576" (K/M/G/T, with or without iB/B, any
    case: cache/size.h); None if not a size."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?)(?:([kmgt])(?:i?b)?|b)?", str(text).lower())
    if not m:
        return None
    return int(float(m.group(1)) * (1 << (10 * ("kmgt".index(m.group(2)) + 1)) if m.group(2) else 1))


def option_problem(key, value):
    """Why the driver would reject a volume option (csi/volume_spec.cc), or
    None."""
    if key == "chunkSize":
        n = parse_size(value)
        if n is None or not (64 << 10) <= n <= (64 << 20) or n & (n - 1):
            return "%s: must be a power of two from 64KiB to 64MiB" % show(value)
    elif key == "attrTTL":
        try:
            ok = 0 <= float(value) <= 3600
        except ValueError:
            ok = False
        if not ok:
            return "%s: must be seconds from 0 to 3600" % show(value)
    elif key == "readOnly":
        if value not in ("true", "True", "1", "false", "False", "0"):
            return "%s: must be true or false" % show(value)
    elif key == "subPathFrom":
        if value not in ("pv", "pvc"):
            return "%s: must be pv or pvc" % show(value)
    elif key == "onDelete":
        if value not in ("delete", "retain"):
            return "%s: must be delete or retain" % show(value)
    return None


def origin_scheme(origin):
    m = re.match(r"^([a-z][a-z0-9+.-]*)://", origin or "")
    return m.group(1) if m else None


def file_origin_path(origin):
    return origin[len("file://"):] if origin.startswith("file://") else None


# --- the tests -----------------------------------------------------------------


class Manifests(unittest.TestCase):
    docs = []

    @classmethod
    def setUpClass(cls):
        cls.docs, cls.load_errors = load_manifests(DEPLOY_DIR)

    def setUp(self):
        self.problems = []

    def problem(self, doc, field, message):
        self.problems.append("%s: %s" % (doc.where(field) if doc else field, message))

    def expect_equal(self, doc, field, got, want):
        if got != want:
            self.problem(doc, field, "expected %s, got %s" % (show(want), show(got)))

    def report(self):
        if self.problems:
            self.fail("\n  " + "\n  ".join(self.problems))

    # Helpers over all documents.

    def of_kind(self, kind):
        return [d for d in self.docs if d.kind == kind]

    def named(self, kind, name, namespace=None):
        for d in self.of_kind(kind):
            if d.name == name and (namespace is None or d.namespace == namespace):
                return d
        return None

    def strata_workload(self, subcommand):
        """(doc, pod spec, strata container) of the workload running
        `strata SUBCOMMAND`."""
        for d in self.docs:
            spec = pod_spec(d)
            if spec is None:
                continue
            for c in containers(spec):
                if strata_subcommand(c) == subcommand:
                    return d, spec, c
        return None, None, None

    def sidecar(self, spec, image_name):
        for c in containers(spec):
            image = str(c.get("image", ""))
            if image.startswith(SIDECAR_REGISTRY + image_name + ":"):
                return c
        return None

    def workloads(self):
        for d in self.docs:
            spec = pod_spec(d)
            if spec is not None:
                yield d, spec

    def check_same_socket(self, doc, spec, server, endpoint, client, address_flag="--csi-address"):
        """The client sidecar's --csi-address is the socket the strata
        container serves (same volume, same path inside it)."""
        name = client.get("name")
        server_path = unix_path(endpoint)
        client_path = unix_path(flag(client, address_flag))
        if client_path is None:
            self.problem(doc, "containers[%s].args %s" % (name, address_flag), "missing or not a path")
            return
        sv, srel = resolve_path(spec, server, server_path)
        cv, crel = resolve_path(spec, client, client_path)
        if sv is None or cv is None or sv.get("name") != cv.get("name") or srel != crel:
            self.problem(doc, "containers[%s].args %s" % (name, address_flag),
                         "%s (volume %s, %r) is not the socket strata serves at %s (volume %s, %r)"
                         % (client_path, cv and cv.get("name"), crel, endpoint,
                            sv and sv.get("name"), srel))

    # Every document.

    def test_manifests_parse(self):
        self.assertFalse(self.load_errors, "\n".join(self.load_errors))
        self.assertTrue(self.docs, "no manifests under %s/kubernetes" % DEPLOY_DIR)

    def test_every_document_has_api_version_kind_and_name(self):
        for d in self.docs:
            if not isinstance(d.obj, dict):
                self.problem(d, "", "not a mapping")
                continue
            for field in ("apiVersion", "kind", "metadata.name"):
                value = get(d.obj, field)
                if not isinstance(value, str) or not value:
                    self.problem(d, field, "missing or empty")
        self.report()

    def test_no_duplicate_objects(self):
        seen = {}
        for d in self.docs:
            key = (d.kind, d.namespace, d.name)
            if key in seen:
                self.problem(d, "metadata.name", "also defined in %s" % seen[key].where())
            seen[key] = d
        self.report()

    # CSIDriver.

    def test_csidriver(self):
        drivers = self.of_kind("CSIDriver")
        self.assertEqual([d.name for d in drivers], [DRIVER],
                         "expected one CSIDriver named %s" % DRIVER)
        d = drivers[0]
        self.expect_equal(d, "apiVersion", d.obj.get("apiVersion"), "storage.k8s.io/v1")
        want = {
            "attachRequired": False,
            "podInfoOnMount": True,
            "fsGroupPolicy": "File",
            "requiresRepublish": False,
            "storageCapacity": False,
        }
        for field, value in want.items():
            self.expect_equal(d, "spec." + field, get(d.obj, "spec." + field), value)
        modes = get(d.obj, "spec.volumeLifecycleModes")
        # Inline volumes name their own origin: off until an administrator
        # allows origins on the nodes (--allowed-inline-origins).
        if (modes or []) != ["Persistent"]:
            self.problem(d, "spec.volumeLifecycleModes", "expected [Persistent], got %r" % modes)
        self.report()

    # StorageClasses.

    def test_storage_classes(self):
        classes = self.of_kind("StorageClass")
        names = {d.name for d in classes}
        for want in ("strata-rwx", "strata-s3"):
            if want not in names:
                self.problems.append("deploy/kubernetes: no StorageClass %s" % want)
        _, cspec, _ = self.strata_workload("controller")
        provisioner = self.sidecar(cspec, "csi-provisioner") if cspec else None
        for d in classes:
            self.expect_equal(d, "provisioner", d.obj.get("provisioner"), DRIVER)
            params = d.obj.get("parameters") or {}
            for key, value in params.items():
                if not isinstance(value, str):
                    self.problem(d, "parameters." + key,
                                 "%r is a %s; StorageClass parameters are strings (quote it)"
                                 % (value, type(value).__name__))
                if key not in CLASS_PARAMETERS and not key.startswith("csi.storage.k8s.io/"):
                    self.problem(d, "parameters." + key,
                                 "unknown parameter (known: %s)" % ", ".join(sorted(CLASS_PARAMETERS)))
            origin = params.get("origin")
            if not origin:
                self.problem(d, "parameters.origin", "missing (required)")
            elif origin_scheme(origin) not in CLASS_SCHEMES:
                self.problem(d, "parameters.origin",
                             "%r: scheme must be one of %s" % (origin, ", ".join(CLASS_SCHEMES)))
            elif origin.startswith("file://") and not file_origin_path(origin).startswith("/"):
                self.problem(d, "parameters.origin", "%r: a file:// origin needs an absolute path" % origin)
            for key, value in params.items():
                why = option_problem(key, value)
                if why:
                    self.problem(d, "parameters." + key, why)
            if params.get("subPathFrom") == "pvc" and provisioner is not None \
                    and flag(provisioner, "--extra-create-metadata") is None:
                self.problem(d, "parameters.subPathFrom",
                             "pvc needs csi-provisioner's --extra-create-metadata (controller.yaml)")
            if d.obj.get("allowVolumeExpansion") and cspec is not None \
                    and self.sidecar(cspec, "csi-resizer") is None:
                self.problem(d, "allowVolumeExpansion", "true, but the controller has no csi-resizer")
            if d.obj.get("reclaimPolicy", "Delete") not in ("Delete", "Retain"):
                self.problem(d, "reclaimPolicy", "invalid %r" % d.obj.get("reclaimPolicy"))
            if d.obj.get("volumeBindingMode", "Immediate") not in ("Immediate", "WaitForFirstConsumer"):
                self.problem(d, "volumeBindingMode", "invalid %r" % d.obj.get("volumeBindingMode"))
            self.check_class_secrets(d, params, origin)
        self.report()

    def check_class_secrets(self, d, params, origin):
        prefix = "csi.storage.k8s.io/"
        for key in params:
            if not key.startswith(prefix):
                continue
            m = re.fullmatch(r"(.+)-secret-(name|namespace)", key[len(prefix):])
            if not m or m.group(1) not in SECRET_KINDS:
                self.problem(d, "parameters." + key, "not a CSI secret parameter")
                continue
            other = "namespace" if m.group(2) == "name" else "name"
            if "%s%s-secret-%s" % (prefix, m.group(1), other) not in params:
                self.problem(d, "parameters." + key,
                             "has no matching %s%s-secret-%s" % (prefix, m.group(1), other))
        uses_s3 = origin_scheme(origin) == "s3"
        for kind in SECRET_KINDS:
            name = params.get("%s%s-secret-name" % (prefix, kind))
            ns = params.get("%s%s-secret-namespace" % (prefix, kind))
            if not name or not ns or "${" in name + ns:
                continue  # templated names are resolved per PVC
            secret = self.named("Secret", name, ns)
            field = "parameters.%s%s-secret-name" % (prefix, kind)
            if secret is None:
                self.problem(d, field, "no Secret %s/%s under deploy/kubernetes" % (ns, name))
                continue
            if uses_s3:
                keys = set(secret.obj.get("data") or {}) | set(secret.obj.get("stringData") or {})
                for k in S3_SECRET_KEYS:
                    if k not in keys:
                        self.problem(secret, "stringData." + k, "missing (an s3:// origin needs it)")
            if kind in CONTROLLER_SECRET_KINDS and not self.can("strata-system", "strata-controller",
                                                                "get", "", "secrets", ns, name):
                self.problem(d, field, "strata-controller may not get Secret %s/%s (rbac.yaml)" % (ns, name))

    def test_s3_class_uses_secrets_on_both_sides(self):
        d = self.named("StorageClass", "strata-s3")
        self.assertIsNotNone(d, "deploy/kubernetes: no StorageClass strata-s3")
        params = d.obj.get("parameters") or {}
        for kind in ("provisioner", "node-stage", "controller-expand"):
            for part in ("name", "namespace"):
                key = "csi.storage.k8s.io/%s-secret-%s" % (kind, part)
                want = "strata-s3-credentials" if part == "name" else "strata-system"
                self.expect_equal(d, "parameters." + key, params.get(key), want)
        self.report()

    # RBAC.

    def rules_for(self, sa_ns, sa_name, namespace):
        """Rules granted to a service account in a namespace (None: cluster)."""
        rules = []
        for b in self.of_kind("ClusterRoleBinding") + self.of_kind("RoleBinding"):
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                       and s.get("namespace", b.namespace) == sa_ns for s in b.obj.get("subjects") or []):
                continue
            if b.kind == "RoleBinding" and b.namespace != namespace:
                continue
            ref = b.obj.get("roleRef") or {}
            role = self.named(ref.get("kind"), ref.get("name"),
                              b.namespace if ref.get("kind") == "Role" else None)
            if role is not None:
                rules += role.obj.get("rules") or []
        return rules

    def can(self, sa_ns, sa_name, verb, group, resource, namespace, name=None):
        for r in self.rules_for(sa_ns, sa_name, namespace):
            if (group in (r.get("apiGroups") or []) or "*" in (r.get("apiGroups") or [])) \
                    and (resource in (r.get("resources") or []) or "*" in (r.get("resources") or [])) \
                    and (verb in (r.get("verbs") or []) or "*" in (r.get("verbs") or [])) \
                    and (not r.get("resourceNames") or name in r["resourceNames"]):
                return True
        return False

    def test_service_accounts_exist(self):
        for d, spec in self.workloads():
            sa = spec.get("serviceAccountName")
            if sa is None:
                if d.namespace == "strata-system":
                    self.problem(d, "spec.serviceAccountName", "missing (strata pods use their own)")
                continue
            found = self.named("ServiceAccount", sa, d.namespace)
            if found is None or os.path.basename(found.path) != "rbac.yaml":
                self.problem(d, "spec.serviceAccountName",
                             "no ServiceAccount %s/%s in rbac.yaml" % (d.namespace, sa))
        self.report()

    def test_bindings_refer_to_existing_roles_and_accounts(self):
        for b in self.of_kind("ClusterRoleBinding") + self.of_kind("RoleBinding"):
            ref = b.obj.get("roleRef") or {}
            kind = ref.get("kind")
            if kind not in ("ClusterRole", "Role") or (b.kind == "ClusterRoleBinding" and kind == "Role"):
                self.problem(b, "roleRef.kind", "invalid %r" % kind)
            elif self.named(kind, ref.get("name"), b.namespace if kind == "Role" else None) is None:
                self.problem(b, "roleRef.name", "no %s %r" % (kind, ref.get("name")))
            self.expect_equal(b, "roleRef.apiGroup", ref.get("apiGroup"), "rbac.authorization.k8s.io")
            subjects = b.obj.get("subjects") or []
            if not subjects:
                self.problem(b, "subjects", "empty")
            for i, s in enumerate(subjects):
                if s.get("kind") != "ServiceAccount":
                    continue
                ns = s.get("namespace") or b.namespace
                if self.named("ServiceAccount", s.get("name"), ns) is None:
                    self.problem(b, "subjects[%d]" % i, "no ServiceAccount %s/%s" % (ns, s.get("name")))
        self.report()

    def test_controller_account_has_sidecar_permissions(self):
        need = [
            ("persistentvolumes", "", ("get", "list", "watch", "create", "delete", "patch")),
            ("persistentvolumeclaims", "", ("get", "list", "watch", "update")),
            ("persistentvolumeclaims/status", "", ("patch",)),
            ("storageclasses", "storage.k8s.io", ("get", "list", "watch")),
            ("events", "", ("list", "watch", "create", "update", "patch")),
            ("csinodes", "storage.k8s.io", ("get", "list", "watch")),
            ("nodes", "", ("get", "list", "watch")),
            ("volumeattachments", "storage.k8s.io", ("get", "list", "watch")),
            ("pods", "", ("get", "list", "watch")),
        ]
        for resource, group, verbs in need:
            for verb in verbs:
                if not self.can("strata-system", "strata-controller", verb, group, resource, None):
                    self.problems.append("deploy/kubernetes/rbac.yaml: strata-controller may not %s %s"
                                         % (verb, resource))
        for verb in ("get", "watch", "list", "delete", "update", "create"):
            if not self.can("strata-system", "strata-controller", verb, "coordination.k8s.io", "leases",
                            "strata-system"):
                self.problems.append("deploy/kubernetes/rbac.yaml: strata-controller may not %s leases "
                                     "in strata-system (leader election)" % verb)
        self.report()

    # Pods: volumes and images.

    def test_volume_mounts_refer_to_declared_volumes(self):
        for d, spec in self.workloads():
            names = [v.get("name") for v in spec.get("volumes") or []]
            for n in set(names):
                if names.count(n) > 1:
                    self.problem(d, "spec.volumes", "volume %r declared twice" % n)
            for c in containers(spec):
                for i, m in enumerate(c.get("volumeMounts") or []):
                    if m.get("name") not in names:
                        self.problem(d, "containers[%s].volumeMounts[%d].name" % (c.get("name"), i),
                                     "%r is not a declared volume (%s)" % (m.get("name"), ", ".join(names)))
                    if m.get("mountPropagation") == "Bidirectional" \
                            and not get(c, "securityContext.privileged"):
                        self.problem(d, "containers[%s].volumeMounts[%d].mountPropagation"
                                     % (c.get("name"), i), "Bidirectional needs a privileged container")
        self.report()

    def test_images(self):
        for d, spec in self.workloads():
            if d.namespace != "strata-system":
                continue  # examples run the users' images
            for c in containers(spec):
                image = str(c.get("image", ""))
                field = "containers[%s].image" % c.get("name")
                if strata_subcommand(c) is not None:
                    if not image.split("/")[-1].startswith("strata:"):
                        self.problem(d, field, "%r: expected the strata image" % image)
                    if argv(c)[:1] != [STRATA_BINARY]:
                        self.problem(d, "containers[%s].command" % c.get("name"),
                                     "expected [%s, ...], got %r" % (STRATA_BINARY, c.get("command")))
                elif not re.fullmatch(re.escape(SIDECAR_REGISTRY) + r"[a-z0-9-]+:v\d+\.\d+\.\d+", image):
                    self.problem(d, field, "%r: sidecars come from %sNAME:vX.Y.Z" % (image, SIDECAR_REGISTRY))
        self.report()

    # The node plugin.

    def test_node_daemonset(self):
        d, spec, strata = self.strata_workload("node")
        self.assertIsNotNone(d, "deploy/kubernetes: no workload runs `strata node`")
        self.expect_equal(d, "kind", d.kind, "DaemonSet")
        self.expect_equal(d, "metadata.namespace", d.namespace, "strata-system")
        self.expect_equal(d, "spec.template.spec.priorityClassName",
                          spec.get("priorityClassName"), "system-node-critical")
        if not any(t.get("operator") == "Exists" and not t.get("key") for t in spec.get("tolerations") or []):
            self.problem(d, "spec.template.spec.tolerations", "needs {operator: Exists} (every node)")
        grace = spec.get("terminationGracePeriodSeconds")
        if not isinstance(grace, int) or not 0 < grace <= 120:
            self.problem(d, "spec.template.spec.terminationGracePeriodSeconds",
                         "expected a modest value (1..120), got %r" % grace)
        where = "containers[%s]" % strata.get("name")
        self.expect_equal(d, where + ".securityContext.privileged",
                          get(strata, "securityContext.privileged"), True)
        seccomp = get(strata, "securityContext.seccompProfile.type") \
            or get(spec, "securityContext.seccompProfile.type")
        self.expect_equal(d, where + ".securityContext.seccompProfile.type", seccomp, "Unconfined")
        if not get(strata, "resources.requests"):
            self.problem(d, where + ".resources.requests", "missing")

        vols = volumes_by_name(spec)

        def host_path_of(mount_path, container=strata):
            m = find_mount(container, mount_path)
            if m is None:
                self.problem(d, "containers[%s].volumeMounts" % container.get("name"),
                             "nothing mounted at %s" % mount_path)
                return None, None
            v = vols.get(m.get("name")) or {}
            return m, v.get("hostPath") or {}

        m, hp = host_path_of(KUBELET_DIR)
        if m is not None:
            self.expect_equal(d, where + ".volumeMounts[%s].mountPropagation" % m.get("name"),
                              m.get("mountPropagation"), "Bidirectional")
            self.expect_equal(d, "volumes[%s].hostPath.path" % m.get("name"), hp.get("path"), KUBELET_DIR)
        m, hp = host_path_of("/dev/fuse")
        if m is not None:
            self.expect_equal(d, "volumes[%s].hostPath.path" % m.get("name"), hp.get("path"), "/dev/fuse")
            self.expect_equal(d, "volumes[%s].hostPath.type" % m.get("name"), hp.get("type"), "CharDevice")
        state = flag(strata, "--state-dir")
        if not isinstance(state, str):
            self.problem(d, where + ".args --state-dir", "missing")
        else:
            m, hp = host_path_of(state)
            if m is not None:
                self.expect_equal(d, "volumes[%s].hostPath.path" % m.get("name"), hp.get("path"), state)

        # Restarts keep the mounts: the node daemon uses the fd-keeper
        # container's socket, in the state directory they share.
        self.expect_equal(d, where + ".args --fd-keeper", flag(strata, "--fd-keeper"), "connect")
        keepers = [c for c in containers(spec) if strata_subcommand(c) == "fd-keeper"]
        if len(keepers) != 1:
            self.problem(d, "containers", "expected one container running `strata fd-keeper`")
        elif isinstance(state, str):
            keeper = keepers[0]
            sock = flag(keeper, "--socket")
            want = flag(strata, "--fd-keeper-socket") or os.path.join(state, "fd-keeper.sock")
            kv, krel = resolve_path(spec, keeper, sock) if isinstance(sock, str) else (None, None)
            nv, nrel = resolve_path(spec, strata, want)
            if kv is None or nv is None or kv.get("name") != nv.get("name") or krel != nrel:
                self.problem(d, "containers[%s].args --socket" % keeper.get("name"),
                             "%r is not where strata node looks (%s)" % (sock, want))

        # The metrics endpoint, when served, is a declared port of the pod.
        mport = flag(strata, "--metrics-port")
        if isinstance(mport, str) and mport.isdigit() and int(mport) > 0:
            ports = {p.get("containerPort") for p in strata.get("ports") or []}
            if int(mport) not in ports:
                self.problem(d, where + ".ports", "--metrics-port %s is not a containerPort" % mport)
            if flag(strata, "--metrics-address") != "0.0.0.0":
                self.problem(d, where + ".args --metrics-address",
                             "a scraper outside the pod needs 0.0.0.0")

        node_id = flag(strata, "--node-id")
        self.expect_equal(d, where + ".args --node-id", node_id, "$(KUBE_NODE_NAME)")
        env = {e.get("name"): e for e in strata.get("env") or []}
        self.expect_equal(d, where + ".env[KUBE_NODE_NAME].valueFrom.fieldRef.fieldPath",
                          get(env.get("KUBE_NODE_NAME", {}), "valueFrom.fieldRef.fieldPath"), "spec.nodeName")

        endpoint = flag(strata, "--csi-endpoint")
        socket = unix_path(endpoint)
        if socket is None:
            self.problem(d, where + ".args --csi-endpoint", "missing or not unix://, got %r" % endpoint)
            self.report()
        registrar = self.sidecar(spec, "csi-node-driver-registrar")
        probe = self.sidecar(spec, "livenessprobe")
        if registrar is None:
            self.problem(d, "containers", "no csi-node-driver-registrar sidecar")
        else:
            self.check_same_socket(d, spec, strata, endpoint, registrar)
            reg = flag(registrar, "--kubelet-registration-path")
            self.expect_equal(d, "containers[%s].args --kubelet-registration-path" % registrar.get("name"),
                              reg, REGISTRATION_PATH)
            # kubelet finds the socket at the host path of the volume strata
            # serves it in.
            v, rel = resolve_path(spec, strata, socket)
            host = get(v or {}, "hostPath.path")
            if host is None or os.path.join(host, rel) != REGISTRATION_PATH:
                self.problem(d, "volumes[%s].hostPath.path" % (v or {}).get("name"),
                             "the socket %s is at %r on the host, not at %s"
                             % (socket, host and os.path.join(host, rel), REGISTRATION_PATH))
            m, hp = host_path_of("/registration", registrar)
            if m is not None:
                self.expect_equal(d, "volumes[%s].hostPath.path" % m.get("name"), hp.get("path"),
                                  REGISTRY_DIR)
        if probe is None:
            self.problem(d, "containers", "no livenessprobe sidecar")
        else:
            self.check_same_socket(d, spec, strata, endpoint, probe)
            self.check_liveness(d, strata, probe)
        self.report()

    # Peers: the port other nodes dial, the headless Service the members
    # come from, and the mutual-TLS Secret.

    def test_node_peers(self):
        d, spec, strata = self.strata_workload("node")
        self.assertIsNotNone(d, "deploy/kubernetes: no workload runs `strata node`")
        where = "containers[%s]" % strata.get("name")

        ports = [p for p in strata.get("ports") or [] if p.get("name") == "peer"]
        port = None
        if len(ports) != 1:
            self.problem(d, where + ".ports", "expected one port named peer, found %d" % len(ports))
        else:
            port = ports[0].get("containerPort")
            if not isinstance(port, int):
                self.problem(d, where + ".ports[peer].containerPort", "not a number: %s" % show(port))
                port = None
            self.expect_equal(d, where + ".ports[peer].protocol", ports[0].get("protocol", "TCP"), "TCP")

        # Other nodes dial this address, and the node leaves itself out of
        # the Service's records by it: the pod's own IP, at the peer port.
        address = flag(strata, "--peer-address")
        if port is not None:
            self.expect_equal(d, where + ".args --peer-address", address, "$(POD_IP):%d" % port)
        env = {e.get("name"): e for e in strata.get("env") or []}
        self.expect_equal(d, where + ".env[POD_IP].valueFrom.fieldRef.fieldPath",
                          get(env.get("POD_IP", {}), "valueFrom.fieldRef.fieldPath"), "status.podIP")
        if spec.get("hostNetwork") and spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
            self.problem(d, "spec.template.spec.dnsPolicy",
                         "hostNetwork needs ClusterFirstWithHostNet to resolve --peer-service")

        self.check_peer_service(d, strata, port)
        self.check_peer_tls(d, spec, strata)
        if flag(strata, "--peer-insecure") is not None:
            self.problem(d, where + ".args --peer-insecure",
                         "peers without TLS serve every volume's chunks to whoever connects")
        self.report()

    def check_peer_service(self, d, strata, port):
        where = "containers[%s].args --peer-service" % strata.get("name")
        value = flag(strata, "--peer-service")
        ref = service_of_dns_name(value, d.namespace) if isinstance(value, str) else None
        if ref is None:
            self.problem(d, where, "missing or not NAME.NAMESPACE.svc.cluster.local: %s" % show(value))
            return
        name, ns = ref
        if ns != d.namespace:
            self.problem(d, where, "%s is in namespace %s, not the DaemonSet's %s"
                         % (value, ns, d.namespace))
        svc = self.named("Service", name, ns)
        if svc is None:
            self.problem(d, where, "no Service %s/%s under deploy/kubernetes" % (ns, name))
            return
        if os.path.dirname(svc.path) != os.path.join(DEPLOY_DIR, "kubernetes"):
            self.problem(svc, "", "the node needs it: it belongs next to node.yaml, not in %s"
                         % os.path.relpath(os.path.dirname(svc.path), DEPLOY_DIR))
        # One A record per node pod (headless), including starting ones.
        self.expect_equal(svc, "spec.clusterIP", get(svc.obj, "spec.clusterIP"), "None")
        self.expect_equal(svc, "spec.publishNotReadyAddresses",
                          get(svc.obj, "spec.publishNotReadyAddresses"), True)
        selector = get(svc.obj, "spec.selector") or {}
        if not selects(selector, pod_labels(d)):
            self.problem(svc, "spec.selector", "%s does not select the pods of %s (labels %s)"
                         % (show(selector), d.where(), show(pod_labels(d))))
        else:
            for other, _ in self.workloads():
                if other is not d and other.namespace == ns and selects(selector, pod_labels(other)):
                    self.problem(svc, "spec.selector", "also selects the pods of %s, which would be "
                                 "taken for peers" % other.where())
        if port is None:
            return
        matching = [p for p in get(svc.obj, "spec.ports") or [] if p.get("port") == port]
        if not matching:
            self.problem(svc, "spec.ports", "no port %d (the node's peer port)" % port)
        for p in matching:
            target = p.get("targetPort", p.get("port"))
            if container_port(strata, target) != port:
                self.problem(svc, "spec.ports[%s].targetPort" % p.get("name"),
                             "%s is not the node's peer port %d" % (show(target), port))

    def check_peer_tls(self, d, spec, strata):
        where = "containers[%s]" % strata.get("name")
        tls_dir = flag(strata, "--peer-tls-dir")
        if not isinstance(tls_dir, str):
            self.problem(d, where + ".args --peer-tls-dir",
                         "missing (peers authenticate with mutual TLS)")
            return
        m = find_mount(strata, tls_dir)
        if m is None:
            self.problem(d, where + ".volumeMounts", "nothing mounted at --peer-tls-dir %s" % tls_dir)
            return
        mwhere = where + ".volumeMounts[%s]" % m.get("name")
        self.expect_equal(d, mwhere + ".readOnly", m.get("readOnly"), True)
        if m.get("subPath"):
            self.problem(d, mwhere + ".subPath",
                         "a subPath mount is not updated when the Secret is renewed")
        vol = volumes_by_name(spec).get(m.get("name")) or {}
        vwhere = "volumes[%s]" % m.get("name")
        if "secret" not in vol:
            self.problem(d, vwhere + ".secret", "--peer-tls-dir %s is not a Secret volume" % tls_dir)
            return
        items = get(vol, "secret.items")
        if items is not None:
            paths = {i.get("key"): i.get("path") for i in items}
            for f in PEER_TLS_FILES:
                if paths.get(f) != f:
                    self.problem(d, vwhere + ".secret.items", "key %s must appear as %s" % (f, f))
        tls_name = flag(strata, "--peer-tls-name") or DEFAULT_PEER_TLS_NAME
        self.check_peer_secret_source(d, vwhere + ".secret.secretName", get(vol, "secret.secretName"),
                                      d.namespace, tls_name)

    def check_peer_secret_source(self, d, field, name, ns, tls_name):
        """Something under deploy/kubernetes makes the peers' Secret: the
        Secret itself, or a cert-manager Certificate writing it."""
        secret = self.named("Secret", name, ns)
        certs = [c for c in self.of_kind("Certificate")
                 if c.namespace == ns and get(c.obj, "spec.secretName") == name]
        if secret is None and not certs:
            self.problem(d, field, "no Secret or cert-manager Certificate under deploy/kubernetes makes "
                         "Secret %s/%s (deploy/README.md, Peers)" % (ns, name))
        if secret is not None:
            keys = set(secret.obj.get("data") or {}) | set(secret.obj.get("stringData") or {})
            for k in PEER_TLS_FILES:
                if k not in keys:
                    self.problem(secret, "data." + k, "missing (--peer-tls-dir needs it)")
        for c in certs:
            if tls_name not in (get(c.obj, "spec.dnsNames") or []):
                self.problem(c, "spec.dnsNames", "must hold %s (--peer-tls-name)" % tls_name)
            usages = get(c.obj, "spec.usages") or []
            for u in ("server auth", "client auth"):
                if u not in usages:
                    self.problem(c, "spec.usages",
                                 "missing %s: every peer is a server and a client" % show(u))
            if get(c.obj, "spec.isCA"):
                self.problem(c, "spec.isCA", "the peers' own certificate must not be a CA")

    def check_liveness(self, d, strata, probe):
        where = "containers[%s].livenessProbe" % strata.get("name")
        port = flag(probe, "--health-port")
        http = get(strata, "livenessProbe.httpGet")
        if not http:
            self.problem(d, where + ".httpGet", "missing")
            return
        self.expect_equal(d, where + ".httpGet.path", http.get("path"), "/healthz")
        got = container_port(strata, http.get("port"))
        want = int(port) if isinstance(port, str) and port.isdigit() else None
        if want is None or got != want:
            self.problem(d, where + ".httpGet.port",
                         "%r (= %r) is not the livenessprobe's --health-port %r"
                         % (http.get("port"), got, port))

    # The controller.

    def test_controller_deployment(self):
        d, spec, strata = self.strata_workload("controller")
        self.assertIsNotNone(d, "deploy/kubernetes: no workload runs `strata controller`")
        self.expect_equal(d, "kind", d.kind, "Deployment")
        self.expect_equal(d, "metadata.namespace", d.namespace, "strata-system")
        self.expect_equal(d, "spec.replicas", get(d.obj, "spec.replicas"), 1)
        self.expect_equal(d, "spec.strategy.type", get(d.obj, "spec.strategy.type"), "Recreate")
        where = "containers[%s]" % strata.get("name")
        endpoint = flag(strata, "--csi-endpoint")
        if unix_path(endpoint) is None:
            self.problem(d, where + ".args --csi-endpoint", "missing or not unix://, got %r" % endpoint)
            self.report()
        # The records live at --state-origin (an s3:// prefix, or a file://
        # directory on a mounted volume), or else in a mounted --state-dir.
        state_origin = flag(strata, "--state-origin")
        if isinstance(state_origin, str):
            if state_origin.startswith("file://"):
                if mount_holding(strata, state_origin[len("file://"):]) is None:
                    self.problem(d, where + ".args --state-origin",
                                 "%r is not on a mounted volume" % state_origin)
            elif not state_origin.startswith("s3://"):
                self.problem(d, where + ".args --state-origin",
                             "%r is neither file:// nor s3://" % state_origin)
        else:
            state = flag(strata, "--state-dir")
            if not isinstance(state, str) or find_mount(strata, state) is None:
                self.problem(d, where + ".args --state-dir", "%r is not a mounted volume" % state)
        for image, required in (("csi-provisioner", ("--extra-create-metadata", "--leader-election")),
                                ("csi-resizer", ("--leader-election",)),
                                ("livenessprobe", ())):
            c = self.sidecar(spec, image)
            if c is None:
                self.problem(d, "containers", "no %s sidecar" % image)
                continue
            self.check_same_socket(d, spec, strata, endpoint, c)
            for f in required:
                if flag(c, f) is None:
                    self.problem(d, "containers[%s].args" % c.get("name"), "%s missing" % f)
            if image == "livenessprobe":
                self.check_liveness(d, strata, c)
        self.report()

    # The containerd snapshotter: containerd runs on the host, so the socket
    # and the snapshot directories must be where the host sees them.

    def test_node_snapshotter(self):
        d, spec, strata = self.strata_workload("node")
        self.assertIsNotNone(d, "deploy/kubernetes: no workload runs `strata node`")
        where = "containers[%s]" % strata.get("name")
        vols = volumes_by_name(spec)

        # containerd dials the socket at this path on the host: the
        # directory holding it is a hostPath mounted at its own path.
        sock = flag(strata, "--snapshotter-address")
        if not isinstance(sock, str) or not sock.startswith("/"):
            self.problem(d, where + ".args --snapshotter-address",
                         "missing or not an absolute path: %s" % show(sock))
        else:
            sock_dir = os.path.dirname(sock)
            m = find_mount(strata, sock_dir)
            if m is None:
                self.problem(d, where + ".volumeMounts",
                             "nothing mounted at %s (the --snapshotter-address directory)" % sock_dir)
            else:
                hp = get(vols.get(m.get("name")) or {}, "hostPath") or {}
                vwhere = "volumes[%s].hostPath" % m.get("name")
                self.expect_equal(d, vwhere + ".path", hp.get("path"), sock_dir)
                self.expect_equal(d, vwhere + ".type", hp.get("type"), "DirectoryOrCreate")
                if m.get("subPath"):
                    self.problem(d, where + ".volumeMounts[%s].subPath" % m.get("name"),
                                 "the socket's directory is mounted whole")
        if flag(strata, "--no-lazy-layers") is not None and not isinstance(sock, str):
            self.problem(d, where + ".args --no-lazy-layers", "without --snapshotter-address")

        # containerd's overlays name STATE_DIR/snapshotter/snapshots/ID/fs as
        # lower directories, and the lazily read layers are FUSE mounts
        # there: the same path on the host, and mounts that propagate out.
        state = flag(strata, "--state-dir")
        m = find_mount(strata, state) if isinstance(state, str) else None
        if m is None:
            self.problem(d, where + ".volumeMounts", "nothing mounted at --state-dir %s" % show(state))
            self.report()
        mwhere = where + ".volumeMounts[%s]" % m.get("name")
        self.expect_equal(d, mwhere + ".mountPropagation", m.get("mountPropagation"), "Bidirectional")
        if m.get("subPath"):
            self.problem(d, mwhere + ".subPath", "the state directory is mounted whole")
        hp = get(vols.get(m.get("name")) or {}, "hostPath") or {}
        if hp.get("path") != state:
            self.problem(d, "volumes[%s].hostPath.path" % m.get("name"),
                         "%s: the state directory must be at the same path on the host (%s)"
                         % (show(hp.get("path")), state))
        # Another container's private copy of the state directory would hold
        # the layer mounts present when it started after strata unmounts them.
        for c in containers(spec):
            if c is strata:
                continue
            for i, cm in enumerate(c.get("volumeMounts") or []):
                if cm.get("name") == m.get("name") \
                        and cm.get("mountPropagation") not in ("HostToContainer", "Bidirectional"):
                    self.problem(d, "containers[%s].volumeMounts[%d].mountPropagation" % (c.get("name"), i),
                                 "%s: the state directory holds strata's layer mounts; expected "
                                 "HostToContainer" % show(cm.get("mountPropagation")))
        self.report()

    # file:// origins are paths the pods must see.

    def test_file_origins_are_mounted_where_needed(self):
        nd, nspec, node = self.strata_workload("node")
        cd, cspec, controller = self.strata_workload("controller")
        self.assertIsNotNone(nd, "no node workload")
        self.assertIsNotNone(cd, "no controller workload")

        def visible(spec, container, path):
            """Some hostPath volume mounted at its own host path holds path."""
            v, rel = resolve_path(spec, container, path)
            host = get(v or {}, "hostPath.path")
            return host is not None and os.path.normpath(os.path.join(host, rel)) == os.path.normpath(path)

        def check(doc, field, origin, needs_controller):
            path = file_origin_path(origin or "")
            if path is None:
                return
            if not visible(nspec, node, path):
                self.problem(doc, field, "%s is not mounted at the same path in %s"
                             % (origin, nd.where("containers[%s]" % node.get("name"))))
            if needs_controller and not visible(cspec, controller, path):
                self.problem(doc, field, "%s is not mounted at the same path in %s"
                             % (origin, cd.where("containers[%s]" % controller.get("name"))))

        for d in self.of_kind("StorageClass"):
            check(d, "parameters.origin", get(d.obj, "parameters.origin"), True)
        for d in self.of_kind("PersistentVolume"):
            check(d, "spec.csi.volumeAttributes.origin",
                  get(d.obj, "spec.csi.volumeAttributes.origin"), False)
        for d, spec in self.workloads():
            for v in spec.get("volumes") or []:
                if get(v, "csi.driver") == DRIVER:
                    check(d, "volumes[%s].csi.volumeAttributes.origin" % v.get("name"),
                          get(v, "csi.volumeAttributes.origin"), False)
        self.report()

    # Examples.

    def test_volumes_and_claims(self):
        classes = {d.name for d in self.of_kind("StorageClass")}
        pvs = {d.name: d for d in self.of_kind("PersistentVolume")}
        for d in self.of_kind("PersistentVolume"):
            csi = get(d.obj, "spec.csi") or {}
            self.expect_equal(d, "spec.csi.driver", csi.get("driver"), DRIVER)
            if not csi.get("volumeHandle"):
                self.problem(d, "spec.csi.volumeHandle", "missing")
            self.check_volume_attributes(d, "spec.csi.volumeAttributes", csi.get("volumeAttributes"))
            origin = get(csi, "volumeAttributes.origin")
            if origin_scheme(origin) not in VOLUME_SCHEMES:
                self.problem(d, "spec.csi.volumeAttributes.origin",
                             "%r: scheme must be one of %s" % (origin, ", ".join(VOLUME_SCHEMES)))
        for d in self.of_kind("PersistentVolumeClaim"):
            sc = get(d.obj, "spec.storageClassName")
            if sc:
                if sc not in classes:
                    self.problem(d, "spec.storageClassName", "no StorageClass %r" % sc)
            else:
                pv = pvs.get(get(d.obj, "spec.volumeName"))
                if pv is None:
                    self.problem(d, "spec.volumeName",
                                 "no PersistentVolume %r" % get(d.obj, "spec.volumeName"))
                elif not set(get(d.obj, "spec.accessModes") or []) \
                        <= set(get(pv.obj, "spec.accessModes") or []):
                    self.problem(d, "spec.accessModes", "not offered by PersistentVolume %s" % pv.name)
            if not get(d.obj, "spec.accessModes"):
                self.problem(d, "spec.accessModes", "missing")
        for d, spec in self.workloads():
            for v in spec.get("volumes") or []:
                claim = get(v, "persistentVolumeClaim.claimName")
                if claim and self.named("PersistentVolumeClaim", claim, d.namespace) is None:
                    self.problem(d, "volumes[%s].persistentVolumeClaim.claimName" % v.get("name"),
                                 "no PersistentVolumeClaim %s/%s" % (d.namespace, claim))
                if "csi" in v:
                    self.expect_equal(d, "volumes[%s].csi.driver" % v.get("name"),
                                      get(v, "csi.driver"), DRIVER)
                    self.check_volume_attributes(d, "volumes[%s].csi.volumeAttributes" % v.get("name"),
                                                 get(v, "csi.volumeAttributes"))
                    origin = get(v, "csi.volumeAttributes.origin")
                    if origin_scheme(origin) not in VOLUME_SCHEMES:
                        self.problem(d, "volumes[%s].csi.volumeAttributes.origin" % v.get("name"),
                                     "%r: scheme must be one of %s" % (origin, ", ".join(VOLUME_SCHEMES)))
        self.report()

    def test_mount_options(self):
        for d in self.of_kind("StorageClass") + self.of_kind("PersistentVolume"):
            field = "mountOptions" if d.kind == "StorageClass" else "spec.mountOptions"
            for o in get(d.obj, field) or []:
                if o not in MOUNT_OPTIONS:
                    self.problem(d, field, "%s: the driver accepts only %s"
                                 % (show(o), ", ".join(sorted(MOUNT_OPTIONS))))
        self.report()

    def check_volume_attributes(self, d, field, attrs):
        for key, value in (attrs or {}).items():
            if key.startswith("csi.storage.k8s.io/"):
                continue
            if key not in VOLUME_OPTIONS:
                self.problem(d, "%s.%s" % (field, key), "the node rejects unknown keys (known: %s)"
                             % ", ".join(sorted(VOLUME_OPTIONS)))
            elif not isinstance(value, str):
                self.problem(d, "%s.%s" % (field, key), "%r is a %s; volumeAttributes are strings (quote it)"
                             % (value, type(value).__name__))
            else:
                why = option_problem(key, value)
                if why:
                    self.problem(d, "%s.%s" % (field, key), why)

    def test_examples_cover_each_way_to_get_a_volume(self):
        kube = os.path.join(DEPLOY_DIR, "kubernetes", "examples")
        ex = [d for d in self.docs if os.path.dirname(d.path) == kube]
        kinds = {d.kind for d in ex}
        for want in ("Secret", "PersistentVolumeClaim", "PersistentVolume"):
            if want not in kinds:
                self.problems.append("deploy/kubernetes/examples: no %s" % want)
        inline = [d for d in ex for v in (pod_spec(d) or {}).get("volumes") or []
                  if get(v, "csi.driver") == DRIVER]
        if not inline:
            self.problems.append("deploy/kubernetes/examples: no pod with an inline csi.strata.io volume")
        for d in inline:
            for v in pod_spec(d).get("volumes"):
                if "csi" in v and get(v, "csi.readOnly") is not True:
                    self.problem(d, "volumes[%s].csi.readOnly" % v.get("name"), "expected true")
        rwx = [d for d in ex if d.kind == "PersistentVolumeClaim"
               and "ReadWriteMany" in (get(d.obj, "spec.accessModes") or [])
               and get(d.obj, "spec.storageClassName") == "strata-rwx"]
        if not rwx:
            self.problems.append("deploy/kubernetes/examples: no ReadWriteMany PVC of strata-rwx")
        self.report()


class Containerd(unittest.TestCase):
    """deploy/containerd/strata-snapshotter.toml: a containerd 1.6 (config
    version 2) fragment naming strata node's snapshotter socket."""

    def setUp(self):
        if tomllib is None:
            self.skipTest("no tomllib (Python 3.11+) or tomli")
        self.path = os.path.join(DEPLOY_DIR, CONTAINERD_FRAGMENT)
        self.where = os.path.join("deploy", CONTAINERD_FRAGMENT)

    def load(self, path):
        with open(path, "rb") as f:
            try:
                return tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                why = str(e)
        self.fail("deploy/containerd/%s: not valid TOML: %s" % (os.path.basename(path), why))

    def test_every_fragment_parses(self):
        folder = os.path.join(DEPLOY_DIR, "containerd")
        self.assertTrue(os.path.exists(self.path), "%s: missing" % self.where)
        for f in sorted(os.listdir(folder)):
            if f.endswith(".toml"):
                self.assertEqual(self.load(os.path.join(folder, f)).get("version"), 2,
                                 "deploy/containerd/%s: expected version = 2 (containerd 1.x)" % f)

    def test_snapshotter_fragment(self):
        conf = self.load(self.path)
        problems = []

        def expect(field, want):
            got = get(conf, field)
            # TOML keeps types: "false" is not false.
            if got != want or type(got) is not type(want):
                problems.append("%s: %s: expected %s, got %s" % (self.where, field, show(want), show(got)))

        expect("version", 2)
        plugin = get(conf, "proxy_plugins", {}).get(SNAPSHOTTER_NAME) or {}
        if not plugin:
            problems.append("%s: no [proxy_plugins.%s]" % (self.where, SNAPSHOTTER_NAME))
        if plugin.get("type") != "snapshot":
            problems.append("%s: proxy_plugins.%s.type: expected \"snapshot\", got %s"
                            % (self.where, SNAPSHOTTER_NAME, show(plugin.get("type"))))
        cri = (get(conf, "plugins", {}).get(CRI_PLUGIN) or {}).get("containerd") or {}
        field = 'plugins."%s".containerd' % CRI_PLUGIN
        if cri.get("snapshotter") != SNAPSHOTTER_NAME:
            problems.append("%s: %s.snapshotter: expected %s, got %s"
                            % (self.where, field, show(SNAPSHOTTER_NAME), show(cri.get("snapshotter"))))
        # Without the CRI plugin's labels on Prepare, strata cannot tell
        # which registry blob a layer is, and containerd pulls every layer.
        if cri.get("disable_snapshot_annotations") is not False:
            problems.append("%s: %s.disable_snapshot_annotations: expected false, got %s"
                            % (self.where, field, show(cri.get("disable_snapshot_annotations"))))

        # The socket is the one the node DaemonSet serves.
        docs, _ = load_manifests(DEPLOY_DIR)
        node = None
        for d in docs:
            spec = pod_spec(d)
            for c in containers(spec) if spec is not None else []:
                if strata_subcommand(c) == "node":
                    node = (d, c)
        if node is None:
            problems.append("deploy/kubernetes: no workload runs `strata node`")
        else:
            d, c = node
            sock = flag(c, "--snapshotter-address")
            if plugin.get("address") != sock:
                problems.append("%s: proxy_plugins.%s.address: %s is not the --snapshotter-address "
                                "of %s (%s)" % (self.where, SNAPSHOTTER_NAME, show(plugin.get("address")),
                                                d.where("containers[%s]" % c.get("name")), show(sock)))
        if problems:
            self.fail("\n  " + "\n  ".join(problems))


def read_unit(path):
    """A systemd unit file as {section: [(key, value), ...]}, continuation
    lines joined and comments dropped, as systemd reads it."""
    sections, section, pending = {}, None, ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and line.lstrip().startswith(("#", ";")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                section = sections.setdefault(line[1:-1], [])
            elif section is not None and "=" in line:
                k, v = line.split("=", 1)
                section.append((k.strip(), v.strip()))
    return sections


def unit_value(unit, section, key):
    values = [v for k, v in unit.get(section, []) if k == key]
    return values[-1] if values else None


def words_flag(words, name):
    """flag() over a list of words."""
    return flag({"args": words}, name)


class HostMode(unittest.TestCase):
    """deploy/host: `strata node` as a systemd service with a registrar-only
    DaemonSet, for nodes whose containerd 1.6 uses Strata as the snapshotter
    of every container (a pod cannot serve the snapshotter its own
    containers are made through)."""

    def setUp(self):
        self.dir = os.path.join(DEPLOY_DIR, "host")
        self.unit_path = os.path.join(self.dir, "strata-node.service")
        self.unit = read_unit(self.unit_path)
        self.exec = shlex.split(unit_value(self.unit, "Service", "ExecStart") or "")
        self.where = "deploy/host/strata-node.service"
        with open(os.path.join(self.dir, "node-registrar.yaml")) as f:
            self.registrar = [Doc(os.path.join(self.dir, "node-registrar.yaml"), i, o)
                              for i, o in enumerate(yaml.safe_load_all(f)) if o is not None]

    def test_unit_is_valid_for_systemd(self):
        # systemd-analyze checks the directives and that ExecStart is an
        # executable: the built binary stands in for /usr/local/bin/strata.
        # It exits 0 on directives it ignores; anything it says is a fault.
        exe = os.environ.get("STRATA_BIN", "/bin/true")
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, "strata-node.service")
            with open(self.unit_path) as f, open(copy, "w") as out:
                out.write(f.read().replace(STRATA_BINARY, exe))
            r = subprocess.run(["systemd-analyze", "verify", copy], capture_output=True,
                               text=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""),
                         "%s: systemd-analyze verify" % self.where)

    def test_unit_runs_the_node_as_node_yaml_does(self):
        w = self.exec
        self.assertGreater(len(w), 1, "%s: no ExecStart" % self.where)
        self.assertEqual(w[:2], [STRATA_BINARY, "node"], "%s: ExecStart" % self.where)
        self.assertEqual(unix_path(words_flag(w, "--csi-endpoint")), REGISTRATION_PATH,
                         "%s: --csi-endpoint must be where kubelet finds the driver" % self.where)
        with open(os.path.join(DEPLOY_DIR, CONTAINERD_FRAGMENT), "rb") as f:
            address = get(tomllib.load(f), "proxy_plugins", {}).get(SNAPSHOTTER_NAME, {}).get("address")
        self.assertEqual(words_flag(w, "--snapshotter-address"), address,
                         "%s: --snapshotter-address is not the containerd fragment's" % self.where)
        self.assertIn("$STRATA_ARGS", w, "%s: the node's own flags (EnvironmentFile)" % self.where)
        # The keeper spawned by the daemon outlives its restarts: systemd
        # must stop the daemon alone, and start it again by itself.
        self.assertIn(words_flag(w, "--fd-keeper"), (None, "spawn"), self.where)
        self.assertEqual(unit_value(self.unit, "Service", "KillMode"), "process",
                         "%s: KillMode (the default kills the FD keeper, and every mount, at "
                         "each restart)" % self.where)
        self.assertEqual(unit_value(self.unit, "Service", "Restart"), "always", self.where)
        self.assertIn("containerd.service",
                      (unit_value(self.unit, "Unit", "Before") or "").split(), self.where)

    def test_environment_file(self):
        env = {}
        with open(os.path.join(self.dir, "strata-node.env")) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    k, v = line.split("=", 1)
                    env[k] = shlex.split(v)[0] if v else ""
        self.assertEqual(sorted(env), ["STRATA_ARGS"], "deploy/host/strata-node.env")
        args = shlex.split(env["STRATA_ARGS"])
        # The port the registrar pods declare for the strata-peers Service.
        pod = pod_spec(self.registrar[0])
        peer_port = container_port(containers(pod)[0], "peer")
        self.assertEqual(words_flag(args, "--peer-address"), "NODE_IP:%s" % peer_port)
        service = words_flag(args, "--peer-service")
        self.assertEqual(service, "strata-peers.strata-system.svc.cluster.local")
        self.assertEqual(words_flag(args, "--peer-tls-dir"), "/etc/strata/peer-tls")

    def test_registrar_daemonset(self):
        problems = []
        d = self.registrar[0]
        spec = pod_spec(d)
        if len(self.registrar) != 1 or d.kind != "DaemonSet" or spec is None:
            self.fail("deploy/host/node-registrar.yaml: expected one DaemonSet")
        for c in containers(spec):
            if strata_subcommand(c) is not None:
                problems.append("%s: runs strata: the host runs it" % d.where("containers[%s]" % c.get("name")))
        if spec.get("hostNetwork") is not True:
            problems.append("%s: hostNetwork must be true (the peers Service lists the node's IP)"
                            % d.where("spec.template.spec"))
        reg = containers(spec)[0]
        if flag(reg, "--kubelet-registration-path") != REGISTRATION_PATH:
            problems.append("%s: --kubelet-registration-path is not %s" % (d.where("containers[0]"),
                                                                          REGISTRATION_PATH))
        vol, rel = resolve_path(spec, reg, unix_path(flag(reg, "--csi-address")) or "")
        host = get(vol or {}, "hostPath.path")
        if host is None or os.path.join(host, rel) != REGISTRATION_PATH:
            problems.append("%s: --csi-address is not the host's %s" % (d.where("containers[0]"),
                                                                       REGISTRATION_PATH))
        # The strata-peers Service selects these pods.
        docs, _ = load_manifests(DEPLOY_DIR)
        svc = next((x for x in docs if x.kind == "Service" and x.name == "strata-peers"), None)
        labels = get(d.obj, "spec.template.metadata.labels") or {}
        for k, v in (get(svc.obj, "spec.selector") or {}).items() if svc else []:
            if labels.get(k) != v:
                problems.append("%s: label %s=%s, which strata-peers selects" % (
                    d.where("spec.template.metadata.labels"), k, v))
        if problems:
            self.fail("\n  " + "\n  ".join(problems))

    def test_the_units_command_runs(self):
        """ExecStart as systemd would run it, with the paths moved under a
        temporary root: the daemon serves the CSI and snapshotter sockets;
        killed, it leaves its FD keeper behind, and the next one (Restart=)
        uses that keeper."""
        exe = os.environ.get("STRATA_BIN")
        if not exe or os.geteuid() != 0:
            self.skipTest("needs STRATA_BIN (set by ctest) and root")
        root = tempfile.mkdtemp(prefix="strata-host-")
        moved = {"/var/lib/strata": root + "/state", "/var/lib/kubelet": root + "/kubelet",
                 "/run/strata": root + "/run"}

        def move(word):
            for old, new in moved.items():
                word = word.replace(old, new)
            return word

        argv = [exe]
        for w in self.exec[1:]:
            if w == "$STRATA_ARGS":
                argv += ["--peer-address=127.0.0.1:%d" % free_port(), "--peer-insecure"]
            elif w.startswith("--metrics-port="):
                argv.append("--metrics-port=0")  # 9464 may be taken on this machine
            else:
                argv.append(move(w))
        keeper_sock = os.path.join(root, "state", "fd-keeper.sock")
        procs, keeper = [], None
        try:
            for run in range(2):
                p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                procs.append(p)
                out = read_until(p, b"running", 60)
                self.assertIn(b"running", out, out.decode(errors="replace"))
                for sock in (unix_path(move(words_flag(self.exec, "--csi-endpoint"))),
                             move(words_flag(self.exec, "--snapshotter-address")), keeper_sock):
                    self.assertTrue(os.path.exists(sock), "run %d: no %s" % (run, sock))
                p.kill()  # a crash; KillMode=process leaves the keeper
                p.wait(timeout=30)
                keepers = subprocess.run(["pgrep", "-f", "fd-keeper.*" + keeper_sock],
                                         capture_output=True, text=True).stdout.split()
                self.assertEqual(len(keepers), 1, "run %d: keepers %s" % (run, keepers))
                # The second daemon used the keeper the first one left.
                self.assertEqual(keepers[0], keeper or keepers[0], "run %d" % run)
                keeper = keepers[0]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
                p.stdout.close()
            subprocess.run(["pkill", "-KILL", "-f", root])
            subprocess.run(["umount", "-R", "-l", root], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until(proc, want, seconds):
    """What the process printed until `want`, its exit or `seconds`."""
    out, deadline = b"", time.monotonic() + seconds
    fd = proc.stdout.fileno()
    while want not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
    return out


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(DEPLOY_DIR, "Dockerfile")
        with open(self.path) as f:
            text = f.read()
        # Instructions, with continuation lines joined and comment lines
        # dropped (as Docker does); each with the line number it starts on.
        self.lines = []
        cur, start = "", None
        for n, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            if start is None:
                start = n
            stripped = line.rstrip()
            if stripped.endswith("\\"):
                cur += stripped[:-1] + " "
                continue
            cur += stripped
            if cur.strip():
                self.lines.append((start, " ".join(cur.split())))
            cur, start = "", None

    def where(self, n):
        return "deploy/Dockerfile:%d" % n

    def test_debian_12_bases(self):
        froms = [(n, l) for n, l in self.lines if l.upper().startswith("FROM ")]
        self.assertTrue(froms, "deploy/Dockerfile: no FROM")
        stages = set()
        for n, l in froms:
            words = l.split()
            image = words[1]
            if len(words) >= 4 and words[2].upper() == "AS":
                stages.add(words[3])
            if image in stages:
                continue
            if not re.fullmatch(r"(docker\.io/)?(library/)?debian:(12|bookworm)(-slim)?"
                                r"(@sha256:[0-9a-f]+)?", image):
                self.fail("%s: FROM %s is not debian:12 / debian:12-slim / bookworm(-slim)"
                          % (self.where(n), image))

    def test_no_downloads_outside_apt(self):
        bad = re.compile(r"\b(curl|wget|pip3?|easy_install|npm|go (get|install)|git clone)\b")
        for n, l in self.lines:
            if l.upper().startswith(("RUN ", "ADD ")):
                m = bad.search(l)
                if m:
                    self.fail("%s: %r downloads outside Debian's archive: %s"
                              % (self.where(n), m.group(0), l))
            if l.upper().startswith("ADD ") and re.search(r"https?://", l):
                self.fail("%s: ADD of a URL: %s" % (self.where(n), l))

    def test_binary_and_entrypoint(self):
        entry = [l for _, l in self.lines if l.upper().startswith("ENTRYPOINT")]
        self.assertEqual(entry, ['ENTRYPOINT ["%s"]' % STRATA_BINARY],
                         "deploy/Dockerfile: ENTRYPOINT must be [\"%s\"]" % STRATA_BINARY)
        self.assertTrue(any(l.upper().startswith("COPY ") and l.split()[-1] == STRATA_BINARY
                            for _, l in self.lines),
                        "deploy/Dockerfile: nothing is copied to %s" % STRATA_BINARY)
        self.assertTrue(any("scripts/build.sh release" in l for _, l in self.lines),
                        "deploy/Dockerfile: the binary is not built with scripts/build.sh release")

    def test_build_packages_come_from_install_deps(self):
        script = os.path.join(os.path.dirname(DEPLOY_DIR), "scripts", "install-deps.sh")
        if not os.path.exists(script):
            self.skipTest("no scripts/install-deps.sh next to %s" % DEPLOY_DIR)
        with open(script) as f:
            m = re.search(r"PACKAGES=\((.*?)\n\)", f.read(), re.S)
        self.assertIsNotNone(m, "scripts/install-deps.sh: no PACKAGES=( ... )")
        known = set(re.sub(r"#[^\n]*", "", m.group(1)).split())
        # The first stage installs build packages; they must be the script's.
        stage = None
        for n, l in self.lines:
            if l.upper().startswith("FROM "):
                stage = 0 if stage is None else stage + 1
            if stage == 0 and l.upper().startswith("RUN ") and "apt-get install" in l:
                after = l.split("apt-get install", 1)[1]
                after = re.split(r"&&|;", after)[0]
                pkgs = [w for w in after.split() if not w.startswith("-")]
                unknown = sorted(set(pkgs) - known)
                if unknown:
                    self.fail("%s: build packages not in scripts/install-deps.sh: %s"
                              % (self.where(n), " ".join(unknown)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        DEPLOY_DIR = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
