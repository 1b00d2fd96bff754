"""Every key of a config dataclass, with its default and its meaning (each field's ``metadata["help"]``), as the
Markdown table the README shows; ``python -m superhf_lab.launch.keys`` prints the run's and every algorithm's."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, NamedTuple

import yaml


class Key(NamedTuple):
    name: str  # dotted, as an override names it
    default: str  # as YAML writes it; empty for a section of keys
    help: str


def config_keys(config: Any, prefix: str = "", _listed: list | None = None) -> list[Key]:
    """The keys of a config dataclass (a class or an instance, whose values are then the defaults), depth first: a
    section (a nested dataclass) gets a row and then its keys; a mapping of dataclasses (``data.sources``) its
    entries' keys under ``<name>``. A section equal to one listed before (``preferences`` after ``data``) gets its
    row alone: its help names the keys it shares."""
    instance = config() if isinstance(config, type) else config
    listed = [] if _listed is None else _listed
    listed.append(instance)
    hints = typing.get_type_hints(type(instance))
    keys = []
    for field in dataclasses.fields(instance):
        name, value, help_text = prefix + field.name, getattr(instance, field.name), field.metadata.get("help", "")
        section, entries = _section_type(hints[field.name])
        if section is not None:
            keys.append(Key(name, "" if value is not None else "null", help_text))
            value = section() if value is None else value
            if not any(type(value) is type(other) and value == other for other in listed):
                keys += config_keys(value, name + ".", listed)
        elif entries is not None:
            keys.append(Key(name, _yaml(value), help_text))
            keys += config_keys(entries, name + ".<name>.", listed)
        else:
            keys.append(Key(name, _yaml(value), help_text))
    return keys


def config_table(config: Any, prefix: str = "") -> str:
    """:func:`config_keys` as a Markdown table: key, default, meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key in config_keys(config, prefix):
        default = f"`{_cell(key.default)}`" if key.default else ""
        lines.append(f"| `{_cell(key.name)}` | {default} | {_cell(key.help)} |")
    return "\n".join(lines) + "\n"


def _section_type(hint: Any) -> tuple[type | None, type | None]:
    """(the dataclass of a section, or of a mapping's entries); Optional unwrapped."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(arguments) == 1:
        hint = arguments[0]
    if dataclasses.is_dataclass(hint):
        return hint, None
    if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
        return None, typing.get_args(hint)[1]
    return None, None


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("\n...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
