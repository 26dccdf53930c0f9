"""The ``openatp`` command line (contract: docs/cli.md).

Each sub-command lives in ``app/commands/<name>.py`` with ``register(subparsers)`` and
``run(args) -> int``. Command modules import heavy libraries (torch, pydicom, Qt) only
inside ``run`` so that ``openatp --help`` and ``openatp info`` start fast.
Typed errors are caught here, once: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core import __version__
from core.errors import Cancelled, OpenATPError

# Order is the order shown in --help.
COMMANDS = ["gui", "info", "dvh", "dose", "predict", "plan", "refine", "train", "compare", "review"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in the contract's one-line form, exit 2."""

    def error(self, message):  # Qt-style name kept: argparse override
        self.exit(2, f"openatp: {message} (see '{self.prog} --help')\n")


class _VersionAction(argparse.Action):
    """``openatp --version``: first line ``openatp X.Y.Z`` (what scripts read), then the bundled
    libraries and models. Computed only when asked (package metadata, no torch/Qt import)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from core.logs import model_cards, versions_line

        lines = [f"openatp {__version__}", versions_line()]
        lines += [f"model {c.site}: {c.title}" for c in model_cards()]
        print("\n".join(lines))  # stdout, as argparse's own version action does
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="openatp", description="OpenATP radiotherapy treatment planning")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="show the OpenATP version, the bundled libraries and models, and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"app.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"app.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def _limit_threads_on_small_machines() -> None:
    """One compute thread on machines with at most two cores, unless OMP_NUM_THREADS says
    otherwise. Measured on a 2-core machine with any other load: torch with two threads
    ran the TG-119 dose matrix in 134 s against 7 s with one (the threads wait on each
    other's time slices); idle, two threads gain at most ~1.5x. Set before torch loads."""
    import os

    if (os.cpu_count() or 1) <= 2:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    _limit_threads_on_small_machines()
    if argv is None:
        # The real program (not a test calling main([...])): log file in the user data folder.
        from core.logs import setup_logging

        setup_logging("cli " + " ".join(sys.argv[1:2]))
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        argv = ["gui"]
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("openatp: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("openatp: interrupted", file=sys.stderr)
        return 130
    except OpenATPError as exc:
        logging.getLogger("openatp.cli").info("%s: %s", args.command, exc)
        print(f"openatp: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("openatp.cli").exception("%s failed with a defect", args.command)
        raise


if __name__ == "__main__":
    sys.exit(main())
