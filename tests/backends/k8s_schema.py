"""Strict validation of manifests against the official Kubernetes schemas (kubernetes-validate),
plus the format rules those JSON schemas do not encode (names, label syntax, quantities)."""

from __future__ import annotations

import re

# a test dependency (pyproject's test extra): without it these tests fail rather than skip
import kubernetes_validate as kv
import pytest

from aal_k8s.config import parse_quantity

#: The oldest Kubernetes the backend supports (podFailurePolicy GA, podReplacementPolicy) and the
#: newest the installed kubernetes-validate knows.
VERSIONS = ("1.31", kv.latest_version())

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


_VALIDATORS: dict = {}


def _validator(doc: dict, version: str):
    """kubernetes_validate.validate's own schema lookup, with the compiled validator kept: the
    package re-reads and re-compiles the 1.3 MB definitions for every document (~60 ms a Job)."""
    from kubernetes_validate import utils

    schema_version = [v for v in utils.all_versions() if utils.major_minor(v) <= version][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    key = (schema_version, doc["kind"].lower(), api)
    if key not in _VALIDATORS:
        import jsonschema
        from referencing import Registry, Resource

        folder = f"kubernetes-json-schema/v{schema_version}-local-strict"
        try:
            schema = utils.schema_contents(f"{folder}/{key[1]}-{api}.json", version)
        except FileNotFoundError:
            raise kv.SchemaNotFoundError(version=version, kind=doc["kind"], api_version=doc["apiVersion"]) from None
        registry = Resource.from_contents(utils.schema_contents(f"{folder}/_definitions.json", version)) @ (
            Resource.from_contents(schema) @ Registry()
        )
        _VALIDATORS[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return _VALIDATORS[key]


def validate_strict(doc: dict, versions=VERSIONS) -> None:
    """Raise jsonschema / kubernetes_validate ValidationError (or SchemaNotFoundError) unless
    ``doc`` is valid against the strict schemas of every version in ``versions``."""
    for version in versions:
        try:
            _validator(doc, version).validate(doc)
        except kv.SchemaNotFoundError:
            raise
        except Exception as e:
            import jsonschema

            if isinstance(e, jsonschema.ValidationError):
                raise kv.ValidationError(e, version) from None
            if isinstance(e, (ImportError, AttributeError, TypeError)):  # the package's internals moved
                kv.validate(doc, version, strict=True)
                continue
            raise
    check_formats(doc)


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (
        (not prefix or (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)))
        and len(name) <= 63
        and bool(_LABEL_NAME.fullmatch(name))
    )


def _labels_ok(labels: dict, where: str) -> None:
    for k, v in (labels or {}).items():
        assert _label_key_ok(k), f"{where}: bad label key {k!r}"
        assert isinstance(v, str) and len(v) <= 63 and (v == "" or _LABEL_NAME.fullmatch(v)), (
            f"{where}: bad label value {k}={v!r}"
        )


def _walk_pod_spec(spec: dict, where: str) -> None:
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        assert _DNS_LABEL.fullmatch(c["name"]), f"{where}: container name {c['name']!r}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: mount of undeclared volume {m['name']!r}"
        names = [e["name"] for e in c.get("env", [])]
        assert len(names) == len(set(names)), f"{where}: duplicate env {names}"
        for kind in ("requests", "limits"):
            for res, q in (c.get("resources", {}).get(kind) or {}).items():
                parse_quantity(str(q))
    for v in spec.get("volumes", []):
        if "emptyDir" in v and "sizeLimit" in v["emptyDir"]:
            parse_quantity(str(v["emptyDir"]["sizeLimit"]))


def check_formats(doc: dict) -> None:
    """What the API server checks beyond the JSON schema, for the parts we write."""
    meta = doc["metadata"]
    where = f"{doc['kind']}/{meta['name']}"
    limit = 63 if doc["kind"] in ("Job", "Namespace", "Service") else 253
    assert len(meta["name"]) <= limit and _DNS_SUBDOMAIN.fullmatch(meta["name"]), f"{where}: bad name"
    if doc["kind"] in ("Job", "Namespace", "Service"):
        assert _DNS_LABEL.fullmatch(meta["name"]), f"{where}: not a DNS-1123 label"
    _labels_ok(meta.get("labels"), where)
    for k in meta.get("annotations") or {}:
        assert _label_key_ok(k), f"{where}: bad annotation key {k!r}"
    template = (doc.get("spec") or {}).get("template")
    if template:
        _labels_ok(template.get("metadata", {}).get("labels"), where + " template")
        _walk_pod_spec(template["spec"], where)
