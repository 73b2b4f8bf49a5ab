#!/usr/bin/env python3
"""Validate Kubernetes and Istio objects against schemas written by others.

Usage: validate.py PATH...   (a YAML file, a directory searched for *.yaml and
*.yml, or - for standard input). Prints one line per object, exits 1 when any
object is invalid, 2 when the validator itself is broken.

- Istio objects (apiVersion group *.istio.io): the pydantic models of
  `cloudcoil-models-istio`, generated from Istio's published CRDs. They drop
  fields they do not know, so the input is compared with a round trip through
  the model: a field the schema does not know, or a value the model had to
  convert, is an error, as with `kubectl apply --validate=strict`.
- Custom objects whose CustomResourceDefinition is among the inputs: that
  CRD's openAPIV3Schema, unknown fields refused as the API server prunes them.
- Everything else: `kubernetes-validate` in strict mode (unknown fields are
  errors) for the newest Kubernetes version the pinned package knows.

Before any file, a self-test feeds each validator known-bad objects and fails
if one is accepted, so a validator that cannot fail never passes silently.
"""

import copy
import json
import pkgutil
import re
import sys
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
    "deploy/istio/proxy-stats-matcher.yaml": "Istio install values (meshConfig), not an object",
    "deploy/docker/docker-compose.yaml": "a Compose file, not an object",
}

KUBERNETES_VERSION = kubernetes_validate.latest_version()


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


def validate_istio(obj, models):
    model = models.get((obj["apiVersion"], obj["kind"]))
    if model is None:
        known = sorted(v for (v, k) in models if k == obj["kind"])
        raise Invalid([f"apiVersion: no {obj['kind']} in {obj['apiVersion']} (Istio's CRDs have it in: {', '.join(known) or 'none'})"])
    problems = unknown_fields(model, obj)
    try:
        # JSON + strict: no "5" for 5 nor 1 for "1", as in the API server.
        parsed = model.model_validate_json(json.dumps(obj, default=str), strict=True)
    except pydantic.ValidationError as e:
        problems += [f"{dotted(err['loc'])}: {err['msg']} (got {json.dumps(err['input'], default=str)[:80]})" for err in e.errors()]
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
        if obj.get("kind") != "CustomResourceDefinition":
            continue
        spec = obj.get("spec") or {}
        for version in spec.get("versions") or []:
            schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
            api_version = f"{spec.get('group')}/{version.get('name')}"
            schemas[(api_version, (spec.get("names") or {}).get("kind"))] = strict_schema(schema, top=True)
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


# --- Dispatch ---------------------------------------------------------------


def validate(obj, models, custom):
    """Raises Invalid naming each bad field; returns the schema it checked."""
    if not isinstance(obj, dict):
        raise Invalid([f"(document): a {type(obj).__name__}, not an object"])
    missing = [f for f in ("apiVersion", "kind") if not isinstance(obj.get(f), str)]
    if missing:
        raise Invalid([f"{f}: missing" for f in missing])
    group = obj["apiVersion"].rpartition("/")[0]
    if group.endswith(".istio.io"):
        validate_istio(obj, models)
        return "Istio CRD"
    schema = custom.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        validate_custom(obj, schema)
        return "shipped CRD"
    validate_kubernetes(obj)
    return f"Kubernetes {KUBERNETES_VERSION}"


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
    ("an unknown field of a shipped CRD", with_change(GOOD_CUSTOM, ("spec", "sise"), 1), "sise"),
    ("a string for a shipped CRD's integer", with_change(GOOD_CUSTOM, ("spec", "size"), "1"), "spec.size"),
]


def self_test(models):
    custom = crd_schemas([SELF_TEST_CRD])
    failures = []
    lost = differences({"spec": {"a": [{"b": 1, "c": "2"}], "d": True}}, {"spec": {"a": [{"b": 1.0, "c": 2}], "d": 1}})
    if lost != ['spec.a[0].c: "2" is not what the schema holds (2)', "spec.d: true is not what the schema holds (1)"]:
        failures.append(f"the round trip comparison missed a change: {lost}")
    if differences({"x": {"y": 1}}, {"x": {}}) != ["x.y: unknown field"]:
        failures.append("the round trip comparison missed a dropped field")
    for obj in (GOOD_WASMPLUGIN, GOOD_SERVICE, GOOD_CUSTOM, SELF_TEST_CRD):
        try:
            validate(obj, models, custom)
        except Invalid as e:
            failures.append(f"refused a valid {obj['kind']}: {e}")
    for what, obj, field in SELF_TEST_BAD:
        try:
            validate(obj, models, custom)
            failures.append(f"accepted {what}")
        except Invalid as e:
            if field not in str(e):
                failures.append(f"refused {what} without naming {field}: {e}")
    return failures


# --- Main -------------------------------------------------------------------


def documents(arg):
    """(label, [objects]) for each file an argument names."""
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


def main(args):
    if not args:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    models = istio_models()
    failures = self_test(models)
    if failures:
        for f in failures:
            print(f"self-test FAILED: {f}")
        return 2
    print(f"self-test: {len(SELF_TEST_BAD)} known-bad objects refused naming their field, 4 good ones accepted")
    print(f"schemas: Istio CRDs from cloudcoil-models-istio ({len(models)} kinds), Kubernetes {KUBERNETES_VERSION} "
          f"from kubernetes-validate {kubernetes_validate.__version__}")

    files, count, bad = [], 0, 0
    for arg in args:
        for label, text in documents(arg):
            try:
                objs = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError as e:
                count += 1
                bad += 1
                print(f"{label}: INVALID: not YAML: {e}")
                continue
            files.append((relative(label), objs))
    custom = crd_schemas(o for _, objs in files for o in objs if isinstance(o, dict))

    for label, objs in files:
        if label in NOT_OBJECTS:
            print(f"{label}: skipped: {NOT_OBJECTS[label]}")
            continue
        for obj in objs:
            count += 1
            try:
                against = validate(obj, models, custom)
                print(f"{label}: {name_of(obj)}: ok ({against})")
            except Invalid as e:
                bad += 1
                print(f"{label}: {name_of(obj)}: INVALID: {e}")
    print(f"manifests: {count - bad} valid, {bad} invalid")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
