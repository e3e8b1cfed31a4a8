"""``hp-ros``: the command-line tool (synthetic data, bag replay, evaluation, demo, checks).

Each sub-command lives in ``hp_ros/tools/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; only the chosen one is imported, so ``hp-ros --help`` stays fast.
Expected failures (bad arguments, missing files, invalid data) end with one readable line
on stderr and a non-zero exit code, never a traceback; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "check": ("hp_ros.tools.check", "check the environment and print the node graph"),
    "synth": ("hp_ros.tools.synth", "generate a synthetic Allegro in-hand sequence as a rosbag2"),
    "check-bag": ("hp_ros.tools.check_bag", "check a recorded bag before replaying it (topics, encodings, TF, clocks)"),
    "replay": ("hp_ros.tools.replay", "publish a rosbag2 into a live ROS 2 graph at the recorded rate"),
    "eval": ("hp_ros.tools.evaluate", "score estimated object poses against ground truth"),
    "demo": ("hp_ros.tools.demo", "run the whole pipeline on a synthetic sequence and report"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hp-ros", description="hp_ros tools: physically consistent in-hand object pose for ROS 2.",
        epilog="Run 'hp-ros COMMAND --help' for the options of a command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})")
        parser.parse_args(argv)  # handles --help; otherwise show usage
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"hp-ros {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"hp-ros {name}", description=text)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"hp-ros {name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, OSError, RuntimeError) as e:
        if debug:
            raise
        print(f"hp-ros {name}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
