#!/usr/bin/env python3
"""Validate Kubernetes and Istio objects against schemas written by others.

Usage: validate.py [--envoy ENVOY] PATH...   (a YAML file, a directory searched
for *.yaml and *.yml, or - for standard input). Prints one line per object,
exits 1 when any object is invalid, 2 when the validator itself is broken.

- Istio objects (apiVersion group *.istio.io): the pydantic models of
  `cloudcoil-models-istio`, generated from Istio's published CRDs. They drop
  fields they do not know, so the input is compared with a round trip through
  the model: a field the schema does not know, or a value the model had to
  convert, is an error, as with `kubectl apply --validate=strict`.
- Custom objects whose CustomResourceDefinition is among the inputs: that
  CRD's openAPIV3Schema, unknown fields refused as the API server prunes them.
- Everything else: `kubernetes-validate` in strict mode (unknown fields are
  errors) for the newest Kubernetes version the pinned package knows.
- Kustomization and Component files (kustomize's input) are skipped:
  build.sh validates what `kubectl kustomize` renders from them.
- Every object: metadata names, namespace and labels in the forms the API
  server requires (the schemas above leave them free).
- With --envoy: an EnvoyFilter's HTTP_ROUTE patch values, free-form to
  Istio's schema, go through `envoy --mode validate` as routes (Envoy's own
  parser refuses unknown fields; istiod would too).

Before any file, a self-test feeds each validator known-bad objects and fails
if one is accepted, so a validator that cannot fail never passes silently.
"""

import argparse
import copy
import importlib.metadata
import json
import pkgutil
import re
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path

import cloudcoil.models.istio
import jsonschema
import kubernetes_validate
import pydantic
import yaml
from cloudcoil.resources import Resource as IstioResource
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]

# Files that are not Kubernetes objects, and what they are instead.
NOT_OBJECTS = {
    "deploy/kubernetes/examples/proxy-stats-matcher.yaml": "Istio install values (meshConfig), not an object",
    "deploy/docker/docker-compose.yaml": "a Compose file, not an object",
}

# A kustomization (or component) is kustomize's input, not an object: build.sh
# renders each package with `kubectl kustomize` and validates what it renders.
KUSTOMIZE_KINDS = {"Kustomization", "Component"}

KUBERNETES_VERSION = kubernetes_validate.latest_version()
ISTIO_VERSION = ".".join(importlib.metadata.version("cloudcoil-models-istio").split(".")[:3])


class Invalid(Exception):
    """One object's problems, each naming its field."""

    def __init__(self, problems):
        super().__init__("; ".join(problems))
        self.problems = problems


def dotted(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(object)"


# --- Istio: cloudcoil-models-istio ------------------------------------------


def istio_models():
    """(apiVersion, kind) -> model class, for every CRD the package has."""
    models = {}
    package = cloudcoil.models.istio
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = __import__(info.name, fromlist=["_"])
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, IstioResource) and value is not IstioResource:
                gvk = value.gvk()
                if gvk.api_version and gvk.kind:
                    models[(gvk.api_version, gvk.kind)] = value
    return models


def differences(given, kept, path=()):
    """Where the model's round trip lost or changed what the input said."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{dotted(path + (key,))}: unknown field")
            else:
                out.extend(differences(value, kept[key], path + (key,)))
        out.extend(f"{dotted(path + (key,))}: added by the model" for key in kept if key not in given)
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [d for i, (g, k) in enumerate(zip(given, kept)) for d in differences(g, k, path + (i,))]
    if given != kept or type(given) is not type(kept) and not _same_number(given, kept):
        return [f"{dotted(path)}: {json.dumps(given)} is not what the schema holds ({json.dumps(kept)})"]
    return []


def _same_number(a, b):
    # A float field given 1 dumps 1.0: the same number to the API server.
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) and a == b


def unknown_fields(annotation, value, path=()):
    """Keys of `value` that the model's fields (by JSON name) do not have.

    Walks the type without validating, so unknown fields are reported next
    to the errors of an object that does not validate (the round trip below
    needs an object that does)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel) and isinstance(value, dict):
        fields = {f.alias or name: f.annotation for name, f in annotation.model_fields.items()}
        out = []
        for key, item in value.items():
            if key in fields:
                out.extend(unknown_fields(fields[key], item, path + (key,)))
            else:
                out.append(f"{dotted(path + (key,))}: unknown field")
        return out
    if origin is typing.Annotated:
        return unknown_fields(args[0], value, path)
    if origin in (typing.Union, types.UnionType):
        # The member that fits best (None fits nothing with fields).
        tries = [unknown_fields(a, value, path) for a in args if a is not type(None)]
        return min(tries, key=len) if tries else []
    if origin is list and isinstance(value, list) and args:
        return [u for i, item in enumerate(value) for u in unknown_fields(args[0], item, path + (i,))]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [u for key, item in value.items() for u in unknown_fields(args[1], item, path + (key,))]
    return []


def shorten(text, limit=60):
    return text if len(text) <= limit else text[: limit - 1] + "…"


def field_path(obj, loc):
    """pydantic's error location without the names it gives union members
    (`match.MatchModel1.context` is the input's `match.context`)."""
    path, node = [], obj
    for i, part in enumerate(loc):
        present = (isinstance(node, dict) and part in node) or (isinstance(node, list) and isinstance(part, int) and part < len(node))
        if present:
            node = node[part]
        elif i + 1 < len(loc):
            continue  # a union member's name, not a field
        path.append(part)
    return path


def validate_istio(obj, models):
    model = models.get((obj["apiVersion"], obj["kind"]))
    if model is None:
        known = sorted(v for (v, k) in models if k == obj["kind"])
        where = f"Istio's CRDs have it in {', '.join(known)}" if known else "no Istio CRD defines it"
        raise Invalid([f"apiVersion: no {obj['kind']} in {obj['apiVersion']} ({where})"])
    problems = unknown_fields(model, obj)
    try:
        # JSON + strict: no "5" for 5 nor 1 for "1", as in the API server.
        parsed = model.model_validate_json(json.dumps(obj, default=str), strict=True)
    except pydantic.ValidationError as e:
        for err in e.errors():
            problem = f"{dotted(field_path(obj, err['loc']))}: {err['msg']} (got {shorten(json.dumps(err['input'], default=str))})"
            if problem not in problems:  # each member of a union says the same
                problems.append(problem)
    else:
        # What the model kept must be what was given: catches whatever the
        # walk above missed (an unknown field, a converted value).
        kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        problems += [d for d in differences(obj, kept) if d not in problems]
    if problems:
        raise Invalid(problems)


# --- Custom objects: the openAPIV3Schema of a CRD among the inputs -----------


def strict_schema(schema, top=False):
    """A CRD's structural schema as JSON Schema that refuses unknown fields."""
    schema = dict(schema)
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if schema.pop("x-kubernetes-int-or-string", False):
        schema["type"] = ["integer", "string"]
    preserve = schema.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema:
        schema["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
        if top:  # apiVersion, kind and metadata are implicit in every CRD
            schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
        if not preserve and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict_schema(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict_schema(s) for s in schema[key]]
    return schema


def crd_schemas(objects):
    """(apiVersion, kind) -> JSON Schema, for every CRD version in `objects`."""
    schemas = {}
    for obj in objects:
        # A malformed CRD is reported by its own validation; it defines nothing.
        try:
            if obj.get("kind") != "CustomResourceDefinition":
                continue
            spec = obj["spec"]
            for version in spec["versions"]:
                schema = strict_schema(version["schema"]["openAPIV3Schema"], top=True)
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
        except (KeyError, TypeError, AttributeError):
            continue
    return schemas


def validate_custom(obj, schema):
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        raise Invalid([f"{dotted(list(e.absolute_path))}: {e.message}" for e in errors])


# --- Kubernetes: kubernetes-validate ----------------------------------------


def every_kubernetes_error(obj):
    """All errors against the schema kubernetes_validate.validate uses (it
    raises only the first), loaded the way it loads them."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    schema = kubernetes_validate.utils.schema_contents(f"{folder}/{obj['kind'].lower()}-{group_version}.json", KUBERNETES_VERSION)
    definitions = kubernetes_validate.utils.schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    errors = jsonschema.Draft202012Validator(schema, registry=registry).iter_errors(obj)
    return [f"{dotted(list(e.absolute_path))}: {e.message}" for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))]


def validate_kubernetes(obj):
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        first = f"{dotted(list(e.path))}: {e.message}"
        every = every_kubernetes_error(obj)
        raise Invalid(every if first in every else [first] + every)
    except kubernetes_validate.SchemaNotFoundError as e:
        raise Invalid([f"apiVersion/kind: {e.message}"])


# --- EnvoyFilter patch values: Envoy's own config parser --------------------

# Operations whose value is a whole route (MERGE values are partial).
WHOLE_VALUE = {"ADD", "INSERT_FIRST", "INSERT_BEFORE", "INSERT_AFTER", "REPLACE"}


def envoy_bootstrap(routes):
    """A bootstrap with `routes` in one virtual host, for --mode validate."""
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "validate",
        "http_filters": [router],
        "route_config": {"virtual_hosts": [{"name": "validate", "domains": ["*"], "routes": routes}]},
    }
    listener = {"name": "validate", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}]}
    return {"static_resources": {"listeners": [listener]}}


def envoy_refuses(envoy, routes):
    """(field inside the route or None, Envoy's complaint), or None when Envoy
    takes the routes."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(envoy_bootstrap(routes), f)
        f.flush()
        run = subprocess.run([envoy, "--mode", "validate", "-c", f.name, "-l", "critical"], capture_output=True, text=True)
    if run.returncode == 0:
        return None
    text = " ".join((run.stderr + run.stdout).split())
    # A JSON-to-proto error names the field (relative to the route).
    parse = re.search(r"@ (\S+): .*?near \d+:\d+ \(offset \d+\): (.*?)\)(?: has unknown fields|: \{|$)", text)
    if parse:
        return re.sub(r"^.*routes\[0\]\.?", "", parse.group(1)) or None, parse.group(2)
    # A constraint error names the message type and field; keep its innermost cause.
    constraint = re.search(r"Proto constraint validation failed \((?:.*\| caused by )?([^|]*)\)", text)
    if constraint:
        return None, constraint.group(1)
    return None, shorten(text, 300)


def validate_envoy_patches(obj, envoy):
    """Every HTTP_ROUTE patch value of an EnvoyFilter through Envoy; True if any."""
    patches = (obj.get("spec") or {}).get("configPatches") or []
    checked, problems = False, []
    for i, p in enumerate(patches):
        patch = p.get("patch") or {}
        if p.get("applyTo") != "HTTP_ROUTE" or patch.get("operation") not in WHOLE_VALUE or not patch.get("value"):
            continue
        checked = True
        refused = envoy_refuses(envoy, [patch["value"]])
        if refused:
            field, reason = refused
            problems.append(f"spec.configPatches[{i}].patch.value{'.' + field if field else ''}: Envoy refuses the route: {reason}")
    if problems:
        raise Invalid(problems)
    return checked


# --- Metadata: what the API server checks for every object -------------------

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(?=.{0,63}$)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# Names of these kinds are path segments (RBAC uses `system:…`).
PATH_SEGMENT_NAMED = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def metadata_problems(obj):
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: missing"]
    problems, name = [], meta.get("name")
    if name is None:
        if "generateName" not in meta:
            problems.append("metadata.name: missing")
    elif not isinstance(name, str):
        problems.append("metadata.name: not a string")
    elif obj["kind"] in PATH_SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            problems.append(f"metadata.name: {name!r} may not be '.', '..' or contain '/' or '%'")
    elif obj["kind"] == "Service":
        if not DNS_1035_LABEL.match(name):
            problems.append(f"metadata.name: {name!r} is not a DNS-1035 label (a Service's name)")
    elif obj["kind"] == "Namespace":
        if not DNS_LABEL.match(name):
            problems.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    elif not DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    namespace = meta.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and DNS_LABEL.match(namespace)):
        problems.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items() if isinstance(meta.get("labels"), dict) else ():
        prefix, _, label = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        if not LABEL_NAME.match(label) or (prefix and not DNS_SUBDOMAIN.match(prefix)):
            problems.append(f"metadata.labels: {key!r} is not a label key")
        if not (isinstance(value, str) and LABEL_VALUE.match(value)):
            problems.append(f"metadata.labels.{key}: {value!r} is not a label value")
    return problems


# --- Dispatch ---------------------------------------------------------------


def validate(obj, models, custom, envoy=None):
    """Raises Invalid naming each bad field; returns the schemas it checked."""
    if not isinstance(obj, dict):
        raise Invalid([f"(document): a {type(obj).__name__}, not an object"])
    missing = [f for f in ("apiVersion", "kind") if not isinstance(obj.get(f), str)]
    if missing:
        raise Invalid([f"{f}: missing" for f in missing])
    group = obj["apiVersion"].rpartition("/")[0]
    checks = []
    if group.endswith(".istio.io"):
        checks.append(("Istio CRD", lambda: validate_istio(obj, models)))
        if envoy and obj["kind"] == "EnvoyFilter":
            checks.append(("route patches: Envoy", lambda: validate_envoy_patches(obj, envoy)))
    elif (obj["apiVersion"], obj["kind"]) in custom:
        checks.append(("shipped CRD", lambda: validate_custom(obj, custom[(obj["apiVersion"], obj["kind"])])))
    else:
        checks.append((f"Kubernetes {KUBERNETES_VERSION}", lambda: validate_kubernetes(obj)))
    problems, passed = [], []
    for what, check in checks:
        try:
            if check() is not False:  # False: nothing there to check
                passed.append(what)
        except Invalid as e:
            problems += e.problems
    problems += [p for p in metadata_problems(obj) if p not in problems]
    if problems:
        raise Invalid(problems)
    return "; ".join(passed + ["metadata"])


def name_of(obj):
    if not isinstance(obj, dict):
        return "(document)"
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


# --- Self-test: each validator must refuse what it exists to refuse ---------

GOOD_WASMPLUGIN = {
    "apiVersion": "extensions.istio.io/v1alpha1",
    "kind": "WasmPlugin",
    "metadata": {"name": "self-test", "namespace": "default"},
    "spec": {"url": "oci://example/filter:1", "sha256": "", "phase": "STATS", "pluginConfig": {"any": ["thing"]}},
}
GOOD_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "self-test"},
    "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80}]},
}
GOOD_CUSTOM = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "self-test"}, "spec": {"size": 1, "free": {"a": 1}}}
GOOD_ENVOYFILTER = {
    "apiVersion": "networking.istio.io/v1alpha3",
    "kind": "EnvoyFilter",
    "metadata": {"name": "self-test", "namespace": "default"},
    "spec": {"configPatches": [{
        "applyTo": "HTTP_ROUTE",
        "match": {"context": "SIDECAR_OUTBOUND"},
        "patch": {"operation": "INSERT_FIRST", "value": {
            "match": {"prefix": "/", "headers": [{"name": "x-self-test", "present_match": True}]},
            "route": {"cluster_header": "x-self-test"},
        }},
    }]},
}
SELF_TEST_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "things.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Cluster",
        "names": {"kind": "Thing", "plural": "things"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "size": {"type": "integer"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            }}},
        }}}],
    },
}


def with_change(obj, path, value):
    obj = copy.deepcopy(obj)
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


# (what, object, the field the error must name)
SELF_TEST_BAD = [
    ("a placeholder sha256", with_change(GOOD_WASMPLUGIN, ("spec", "sha256"), "<digest>"), "spec.sha256"),
    ("an unknown Istio field", with_change(GOOD_WASMPLUGIN, ("spec", "sha265"), ""), "spec.sha265"),
    ("an unknown metadata field", with_change(GOOD_WASMPLUGIN, ("metadata", "lables"), {}), "metadata.lables"),
    ("a string for an Istio enum", with_change(GOOD_WASMPLUGIN, ("spec", "phase"), "LATE"), "spec.phase"),
    ("a string for an Istio integer", with_change(GOOD_WASMPLUGIN, ("spec", "priority"), "5"), "spec.priority"),
    ("an Istio kind in the wrong version", with_change(GOOD_WASMPLUGIN, ("apiVersion",), "extensions.istio.io/v1"), "apiVersion"),
    ("an unknown Kubernetes field", with_change(GOOD_SERVICE, ("spec", "selectr"), {}), "selectr"),
    ("an unknown Kubernetes metadata field", with_change(GOOD_SERVICE, ("metadata", "lables"), {}), "lables"),
    ("a string for a Kubernetes integer", with_change(GOOD_SERVICE, ("spec", "ports"), [{"port": "80"}]), "spec.ports[0].port"),
    ("a kind no schema knows", with_change(GOOD_SERVICE, ("kind",), "Servise"), "apiVersion/kind"),
    ("an upper-case name", with_change(GOOD_WASMPLUGIN, ("metadata", "name"), "Self-Test"), "metadata.name"),
    ("a dotted Service name", with_change(GOOD_SERVICE, ("metadata", "name"), "self.test"), "metadata.name"),
    ("a label value with a space", with_change(GOOD_SERVICE, ("metadata", "labels"), {"a": "b c"}), "metadata.labels.a"),
    ("an EnvoyFilter context Istio does not have", with_change(GOOD_ENVOYFILTER, ("spec", "configPatches", 0, "match", "context"), "OUTBOUND"), "spec.configPatches[0].match.context"),
    ("an unknown field of a shipped CRD", with_change(GOOD_CUSTOM, ("spec", "sise"), 1), "sise"),
    ("a string for a shipped CRD's integer", with_change(GOOD_CUSTOM, ("spec", "size"), "1"), "spec.size"),
]


# Only with --envoy: what Istio's schema leaves free-form.
SELF_TEST_BAD_ENVOY = [
    ("an unknown field in an EnvoyFilter route",
     with_change(GOOD_ENVOYFILTER, ("spec", "configPatches", 0, "patch", "value", "route", "cluster_headr"), "x"),
     "spec.configPatches[0].patch.value"),
]


def self_test(models, envoy):
    """What went wrong, and how many good and bad objects were tried."""
    custom = crd_schemas([SELF_TEST_CRD])
    good = (GOOD_WASMPLUGIN, GOOD_ENVOYFILTER, GOOD_SERVICE, GOOD_CUSTOM, SELF_TEST_CRD)
    bad = SELF_TEST_BAD + (SELF_TEST_BAD_ENVOY if envoy else [])
    failures = []
    lost = differences({"spec": {"a": [{"b": 1, "c": "2"}], "d": True}}, {"spec": {"a": [{"b": 1.0, "c": 2}], "d": 1}})
    if lost != ['spec.a[0].c: "2" is not what the schema holds (2)', "spec.d: true is not what the schema holds (1)"]:
        failures.append(f"the round trip comparison missed a change: {lost}")
    if differences({"x": {"y": 1}}, {"x": {}}) != ["x.y: unknown field"]:
        failures.append("the round trip comparison missed a dropped field")
    for obj in good:
        try:
            validate(obj, models, custom, envoy)
        except Invalid as e:
            failures.append(f"refused a valid {obj['kind']}: {e}")
    for what, obj, field in bad:
        try:
            validate(obj, models, custom, envoy)
            failures.append(f"accepted {what}")
        except Invalid as e:
            if field not in str(e):
                failures.append(f"refused {what} without naming {field}: {e}")
    return failures, len(good), len(bad)


# --- Main -------------------------------------------------------------------


def documents(arg):
    """(label, text) for each file an argument names."""
    if arg == "-":
        return [("<stdin>", sys.stdin.read())]
    path = Path(arg)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    return [(str(p), p.read_text()) for p in files]


def relative(label):
    try:
        return str(Path(label).resolve().relative_to(REPO))
    except ValueError:
        return label


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envoy", help="an envoy binary: also check EnvoyFilter route patches with it")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a YAML file, a directory, or - (standard input)")
    args = parser.parse_args(argv)
    models = istio_models()
    failures, good, bad = self_test(models, args.envoy)
    if failures:
        for f in failures:
            print(f"self-test FAILED: {f}")
        return 2
    print(f"self-test: {bad} known-bad objects refused naming their field, {good} good ones accepted")
    print(f"schemas: Istio {ISTIO_VERSION} CRDs ({len(models)} kinds, cloudcoil-models-istio), Kubernetes "
          f"{KUBERNETES_VERSION} (kubernetes-validate {kubernetes_validate.__version__})")

    files, count, invalid = [], 0, 0
    for arg in args.paths:
        for label, text in documents(arg):
            try:
                objs = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError as e:
                count += 1
                invalid += 1
                print(f"{label}: INVALID: not YAML: {' '.join(str(e).split())}")
                continue
            files.append((relative(label), objs))
    custom = crd_schemas(o for _, objs in files for o in objs if isinstance(o, dict))

    for label, objs in files:
        if label in NOT_OBJECTS:
            if any(isinstance(o, dict) and ("apiVersion" in o or "kind" in o) for o in objs):
                count += 1
                invalid += 1
                print(f"{label}: INVALID: has Kubernetes objects: take it out of NOT_OBJECTS in {Path(__file__).name}")
            else:
                print(f"{label}: skipped: {NOT_OBJECTS[label]}")
            continue
        if objs and all(isinstance(o, dict) and o.get("kind") in KUSTOMIZE_KINDS
                        and str(o.get("apiVersion", "")).startswith("kustomize.config.k8s.io/") for o in objs):
            print(f"{label}: skipped: a kustomization (validated as `kubectl kustomize` renders it)")
            continue
        for obj in objs:
            count += 1
            try:
                against = validate(obj, models, custom, args.envoy)
                print(f"{label}: {name_of(obj)}: ok ({against})")
            except Invalid as e:
                invalid += 1
                print(f"{label}: {name_of(obj)}: INVALID: {e}")
    print(f"manifests: {count - invalid} valid, {invalid} invalid")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
