"""Validate JSON bodies against OpenAI's published OpenAPI description.

The spec lives outside the project, at ``../shared/specs/openai-openapi.yaml``
(a 3 MB OpenAPI 3.1 file). It is parsed once per process and every
``#/components/schemas/<Name>`` can then be checked with ``validate``::

    from openapi_schema import require_spec, validate

    require_spec()  # skip (or, with CI=true, fail) when the spec is absent
    validate("CreateChatCompletionResponse", body)

Schemas are checked as JSON Schema draft 2020-12 (OpenAPI 3.1's dialect).
Two OpenAPI leftovers are translated while loading: ``nullable: true``
(an OpenAPI 3.0 keyword some schemas still use) becomes "or null", and
YAML timestamps stay strings as they would in JSON. ``discriminator``,
``x-*`` extensions, ``example`` and friends are annotations that a 2020-12
validator ignores. Note that the spec rarely forbids extra properties, so
it checks required fields, types and enums, not the absence of extras.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC_PATH", "spec_available", "require_spec", "load_spec", "validator", "validate"]

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "specs" / "openai-openapi.yaml"
_SPEC_URI = "urn:openai-openapi"

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _JsonLikeLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """A safe YAML loader that leaves timestamps as strings, as JSON would."""


_JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


def spec_available() -> bool:
    return SPEC_PATH.is_file()


def require_spec() -> None:
    """Skip the calling test when the spec is absent; in CI that is a failure,
    because CI always has shared/specs and a silent skip would hide it."""
    if spec_available():
        return
    reason = f"OpenAI OpenAPI spec not found at {SPEC_PATH} (shared/specs/ is not beside the project)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, where the spec must be present", pytrace=False)
    pytest.skip(reason)


def _translate_nullable(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` into JSON Schema, recursively.

    Wrapping in anyOf (rather than adding "null" to ``type``) is right for
    every form the spec uses: plain types, enums (which would otherwise
    still reject null) and ``$ref`` siblings.
    """
    if isinstance(node, list):
        return [_translate_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _translate_nullable(value) for key, value in node.items()}
    nullable = out.get("nullable")
    if isinstance(nullable, bool):  # not a property that happens to be named "nullable"
        del out["nullable"]
        if nullable:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def load_spec() -> dict[str, Any]:
    """The whole OpenAPI document, parsed and translated (cached)."""
    with SPEC_PATH.open("rb") as handle:
        spec = yaml.load(handle, Loader=_JsonLikeLoader)  # a SafeLoader subclass
    spec["components"]["schemas"] = _translate_nullable(spec["components"]["schemas"])
    return spec


@cache
def _registry() -> Registry:
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    return Registry().with_resource(_SPEC_URI, resource)


@cache
def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``#/components/schemas/<schema_name>`` with $refs resolved."""
    if schema_name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"no schema named {schema_name!r} in {SPEC_PATH.name}")
    schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def validate(schema_name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` (listing every problem found)
    unless ``instance`` matches ``#/components/schemas/<schema_name>``."""
    errors = sorted(validator(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    details = "\n".join(f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)
    raise jsonschema.ValidationError(f"{schema_name}: {len(errors)} error(s)\n{details}\nbest match: {best.message}")
