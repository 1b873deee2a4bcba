"""The detectors' documentation, as docstrings: written from each detector's JSON Schema
(what ``tidegauge describe --json NAME`` prints), so that ``help(tidegauge.score)``, the
stubs (``python/stubgen.py``) and the command line say the same."""

from __future__ import annotations

import json
import textwrap

# Settings the Python signatures set through `key`, `value` and `time`, and the pipeline
# wiring, which have no meaning here.
NOT_PARAMS = {"type", "inputs", "key_field", "value_field", "ts_field"}


def params(schema: dict) -> dict:
    """The settings a Python caller gives, by name."""
    return {k: v for k, v in schema["properties"].items() if k not in NOT_PARAMS}


def param_doc(name: str, prop: dict) -> str:
    """One parameter's entry in a docstring: its description, then its default and range."""
    facts = []
    if "default" in prop:
        facts.append(f"default {json.dumps(prop['default'])}")
    for key, sign in [("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")]:
        if key in prop:
            facts.append(f"{sign} {json.dumps(prop[key])}")
    text = " ".join(prop.get("description", "").split())
    if facts:
        text += f" ({', '.join(facts)})"
    return "\n".join(textwrap.wrap(f"{name}: {text}", 84, subsequent_indent="    "))


def detector_doc(name: str, schema: dict) -> str:
    """Detector `name`'s entry: what it does, then its parameters."""
    doc = f"``{name}``: " + schema.get("description", "").strip()
    props = params(schema)
    if props:
        doc += f"\n\nParameters (``tidegauge.describe(\"{name}\")``):\n" + "\n".join(param_doc(k, v) for k, v in props.items())
    return doc


def detectors_doc(schema_of, names) -> str:
    """Every detector's entry, with `schema_of(name)` the JSON Schema text of `name`."""
    return "\n\n".join(detector_doc(n, json.loads(schema_of(n))) for n in names)
