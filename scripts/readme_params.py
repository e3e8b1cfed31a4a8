"""Generate the README's parameter tables from the nodes' declarations.

    .venv/bin/python scripts/readme_params.py          # print the tables
    .venv/bin/python scripts/readme_params.py --write  # replace them in README.md

The tables sit between the line ``**All nodes**`` and the heading ``## Command-line tool``;
``test/test_readme.py`` fails when they differ from what this script renders.
"""
from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "**All nodes**", "## Command-line tool"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return '""' if v == "" else str(v)


def _table(title: str, params: dict) -> str:
    rows = [f"**{title}**", "", "| parameter | default | meaning |", "| --- | --- | --- |"]
    for name, p in params.items():
        default, meaning = _fmt(p.default).replace("|", "\\|"), p.description.replace("|", "\\|")
        rows.append(f"| `{name}` | `{default}` | {meaning} |")
    return "\n".join(rows)


def render() -> str:
    """The README section from ``START`` up to (not including) ``END``."""
    from hp_ros.nodes import refinement_node, segmentation_params, tracking_node
    from hp_ros.nodes.params import COMMON_PARAMS

    parts = [("All nodes", COMMON_PARAMS), ("segmentation_node", segmentation_params.SEG_PARAMS),
             ("tracking_node", tracking_node.OWN_PARAMS), ("refinement_node", refinement_node.OWN_PARAMS)]
    return "\n\n".join(_table(t, p) for t, p in parts) + "\n\n"


def current(text: str) -> str:
    """The section as it stands in ``text`` (README contents)."""
    i, j = text.index(START), text.index(END)
    return text[i:j]


def main(argv) -> int:
    text = README.read_text()
    new = render()
    if "--write" in argv:
        README.write_text(text.replace(current(text), new))
        print(f"README.md parameter tables {'unchanged' if current(text) == new else 'rewritten'}")
    else:
        print(new, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
