"""The ``pyro-cnf`` command: list and run the example scripts, and the demo.

::

    pyro-cnf list                        # the examples, with a line on each
    pyro-cnf run funnel --smoke          # runs examples/funnel.py --smoke
    pyro-cnf run funnel --help           # a script's own options
    pyro-cnf demo                        # eight schools: AutoCNF vs AutoNormal, 2-3 minutes

The examples are the scripts of the repository's ``examples/`` folder; a wheel installs them as
``pyro_cnf/examples/``. ``pyro-cnf run NAME OPTIONS`` runs ``NAME.py`` as ``python NAME.py
OPTIONS`` would, in this process. Bad input (an unknown example or command, a bad option of a
script) ends with a one-line message and exit status 2; an error inside a script with a one-line
message and status 1 (``pyro-cnf --traceback ...`` shows the traceback).
"""

from __future__ import annotations

import argparse
import ast
import importlib.resources
import runpy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from . import __version__

__all__ = ["main"]

DEMO = "eight_schools"
"""The script that ``pyro-cnf demo`` runs (writing into ``pyro-cnf-out/demo`` by default)."""

_EPILOG = """\
examples:
  pyro-cnf list                         the examples
  pyro-cnf run eight_schools --smoke    a run of a few seconds
  pyro-cnf run funnel --steps 1000 --seed 1 --out results/funnel
  pyro-cnf run energies --help          a script's own options
  pyro-cnf demo                         AutoCNF vs AutoNormal on eight schools (2-3 minutes)

Every script accepts --smoke, --steps N, --seed S and --out DIR (report.txt, a PNG figure and,
with ArviZ, InferenceData as .nc files).
"""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``prog: error: ...``, status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` on stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _UsageError(Exception):
    """Bad command-line input found after parsing (exit status 2)."""


def _examples_dir() -> Path:
    """The folder of the example scripts: a source checkout's ``examples/``, else the wheel's."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "examples").is_dir():
        return root / "examples"  # a source checkout or an editable install
    return Path(str(importlib.resources.files("pyro_cnf.examples")))


def _examples() -> dict[str, Path]:
    """Every example script by name (``eight_schools`` for ``eight_schools.py``), sorted."""
    paths = sorted(_examples_dir().glob("*.py"))
    return {path.stem: path for path in paths if not path.name.startswith("_")}


def _description(path: Path) -> str:
    """The first line of a script's docstring."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else ""


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """While a script runs, its argparse usage errors are one line (as :class:`_Parser`'s)."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _Parser.error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def _run_example(name: str, options: Sequence[str]) -> int:
    """Run the example script ``name`` with command-line ``options``; return its exit status.

    The script runs in this process as ``__main__``, with ``sys.argv`` set to its path and the
    options, as ``python NAME.py OPTIONS`` would run it.

    Raises:
        ValueError: If there is no example called ``name`` (the message lists them).
    """
    scripts = _examples()
    if name not in scripts:
        raise ValueError(f"unknown example {name!r}; valid examples: {', '.join(scripts)}")
    saved = sys.argv
    sys.argv = [str(scripts[name]), *options]
    try:
        with _one_line_usage_errors():
            runpy.run_path(str(scripts[name]), run_name="__main__")
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2); sys.exit(...)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _parser() -> _Parser:
    parser = _Parser(
        prog="pyro-cnf",
        description="Continuous normalizing flows for Pyro: run the demo and the examples.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyro-cnf {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the traceback of an error in a script"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    commands.add_parser("list", help="list the examples", description="List the examples.")
    run = commands.add_parser(
        "run",
        help="run one example: pyro-cnf run NAME [its options]",
        description="Run one example script with its options (see 'pyro-cnf run NAME --help').",
    )
    run.add_argument("example", metavar="NAME", nargs="?", help="see 'pyro-cnf list'")
    run.add_argument("options", nargs=argparse.REMAINDER, help="the script's options")
    commands.add_parser(
        "demo",
        help=f"run the {DEMO} example: AutoCNF vs AutoNormal (2-3 minutes)",
        description=f"Run examples/{DEMO}.py with --out pyro-cnf-out/demo; options are the "
        "script's (see 'pyro-cnf demo --help').",
        add_help=False,
    )
    return parser


def _list() -> int:
    scripts = _examples()
    width = max(map(len, scripts))
    print("examples (pyro-cnf run NAME [--smoke] [--steps N] [--seed S] [--out DIR] ...):")
    for name, path in scripts.items():
        print(f"  {name.ljust(width)}  {_description(path)}")
    return 0


def _dispatch(args: argparse.Namespace, argv: list[str], extra: list[str]) -> int:
    rest = argv[argv.index(args.command) + 1 :]  # what follows the command, in order
    if args.command == "demo":
        print(f"pyro-cnf demo: examples/{DEMO}.py (2-3 minutes)", file=sys.stderr)
        return _run_example(DEMO, ["--out", "pyro-cnf-out/demo", *rest])
    if extra:
        raise _UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "list":
        return _list()
    if args.example is None:
        raise _UsageError(f"run needs an example name; valid examples: {', '.join(_examples())}")
    if rest[0] != args.example:
        raise _UsageError("the example name comes first: pyro-cnf run NAME [its options]")
    if args.example not in _examples():
        valid = ", ".join(_examples())
        raise _UsageError(f"unknown example {args.example!r}; valid examples: {valid}")
    return _run_example(args.example, rest[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-cnf`` command; returns the exit status.

    Arguments:
        argv: The arguments (default ``sys.argv[1:]``).

    Example:
        >>> main(["list"])  # doctest: +ELLIPSIS
        examples (...):
          conditional ...
          eight_schools ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        return _dispatch(args, argv, extra)
    except _UsageError as error:
        print(f"pyro-cnf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-cnf: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.traceback:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"pyro-cnf: error: {type(error).__name__}: {message} "
            "(rerun as 'pyro-cnf --traceback ...' for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
