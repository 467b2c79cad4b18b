"""packaging/slmd.toml (installed as /etc/slmd/slmd.toml) lists every config
key, and each commented-out line shows the real default, so the file cannot
drift from slmd/config.py unnoticed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel

from slmd.config import AppSection, Config, load_config

CONFIG_FILE = Path(__file__).resolve().parents[2] / "packaging" / "slmd.toml"
# `[section]` and `key = value` lines may be commented out ("# "); an
# [apps.<name>] table is an example of the per-app schema `apps.*`.
_SECTION = re.compile(r"^(?:# )?\[([\w.]+)\]\s*$")
_KEY = re.compile(r"^(?:# )?([a-z_][a-z0-9_]*) = (.+)$")


def _documented() -> dict[str, str]:
    """Dotted key -> value text, for every (possibly commented) assignment."""
    section, found = "", {}
    for line in CONFIG_FILE.read_text().splitlines():
        if m := _SECTION.match(line):
            section = re.sub(r"^apps\.\w+", "apps.*", m.group(1)) + "."
        elif m := _KEY.match(line):
            found.setdefault(section + m.group(1), m.group(2))
    return found


def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_fields(ann, f"{prefix}{name}."))
        elif name == "apps":  # dict[str, AppSection]
            out.update(_fields(AppSection, "apps.*."))
        else:
            out[prefix + name] = field
    return out


def test_every_key_is_documented():
    missing = set(_fields(Config)) - set(_documented()) - {"auth.tokens"}  # a table: shown by example
    assert not missing, f"packaging/slmd.toml lacks {sorted(missing)}"
    unknown = set(_documented()) - set(_fields(Config))
    assert not unknown, f"packaging/slmd.toml documents keys that do not exist: {sorted(unknown)}"


def test_commented_values_are_the_defaults():
    defaults = Config().model_dump(mode="json")
    defaults["apps"] = {"*": AppSection().model_dump(mode="json")}
    for key, text in _documented().items():
        node = defaults
        for part in key.split("."):
            node = node[part]
        if node is None or isinstance(node, (dict, list)):  # the file shows an example, not a default
            continue
        value = tomllib.loads(f"v = {text}")["v"]
        line = f"{key.rsplit('.', 1)[-1]} = {text}"
        if f"# {line}" in CONFIG_FILE.read_text():
            assert value == node, f"{key}: the file says {value!r}, the default is {node!r}"


def test_file_loads_with_the_service_settings():
    cfg = load_config(CONFIG_FILE, environ={})
    assert str(cfg.data_dir) == "/var/lib/slmd"
    assert str(cfg.server.socket_path) == "/run/slmd/slmd.sock"
    assert cfg.server.socket_group == "slmd-clients"
    # Uncommenting every line must still give a valid configuration.
    text = re.sub(r"^# ([a-z_]+ = |\[apps\.)", r"\1", CONFIG_FILE.read_text(), flags=re.M)
    Config.model_validate(tomllib.loads(text))
