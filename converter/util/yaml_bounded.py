"""YAML from outside, nested no deeper than MAX_DEPTH.

PyYAML builds nested collections recursively: 50,000 `[` or 20,000 `{a:`
(under 1 MiB) raised RecursionError, a traceback, from safe_load. Its
parser is not recursive, so the event stream is walked first and a
document nested deeper than any config needs is refused as invalid YAML
before anything is built.
"""
from __future__ import annotations

from typing import Any

MAX_DEPTH = 64


def safe_load(data: str | bytes) -> Any:
    """yaml.safe_load(data), or yaml.YAMLError for a document nested deeper than MAX_DEPTH."""
    import yaml

    depth = 0
    for event in yaml.parse(data, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return yaml.safe_load(data)
