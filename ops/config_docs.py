"""Regenerate the configuration table in README.md from the schema in ops/config.py.

`python -m ops.config_docs` rewrites the block between the config-table markers; a test checks that
the committed README matches, so the table never drifts from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ops import config

START = (
    "<!-- config-table: generated from ops/config.py by `python -m ops.config_docs`; do not edit by hand -->"
)
END = "<!-- end config-table -->"


def table() -> str:
    """Every key (with what it allows, in words), then the rules joining keys and the other variables."""
    defaults = config.as_dict(config.defaults())
    lines = ["| key | environment | default | meaning | allowed |", "|---|---|---|---|---|"]
    for key, _kind, help_, allowed in config.describe_rules():
        section, name = key.split(".")
        default = defaults[section][name]
        shown = f"`{default!r}`" if isinstance(default, str) else f"`{str(default).lower()}`"
        lines.append(f"| `{key}` | `{config.env_name(section, name)}` | {shown} | {help_} | {allowed} |")
    lines += ["", "Checked across keys:", "", *(f"- {rule}" for rule in config.JOINT_RULES), "",
              "Other `PAYSWITCH_*` variables read (any other `PAYSWITCH_*` name is refused):", "",
              *(f"- `{name}`: {meaning}" for name, meaning in config.OTHER_ENV.items())]
    return "\n".join(lines)


def render(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    path = Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
