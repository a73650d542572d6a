"""The ``pyro-cnf`` command: run the demo, list and run the examples.

::

    pyro-cnf demo                           # AutoCNF vs AutoNormal on eight schools, ~2 minutes
    pyro-cnf list                           # the examples (--guides: the guide names too)
    pyro-cnf run eight_schools --steps 500 --guide cnf,mvn --seed 1 --out results/
    pyro-cnf run funnel --help              # an example's own options

Every example writes a text report (``report.txt``: the diagnostics and, with ArviZ, its
summary), PNG figures and, with ArviZ, the InferenceData of each fitted guide as netcdf, into its
output folder (``--out``, default ``pyro-cnf-out/<example>``). Bad input (an unknown example or
guide, a bad option value, an output folder that cannot be written) ends with a one-line message
and a non-zero exit status: 2 for a command-line error, 1 for anything else.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .examples import example_names, load_example
from .examples._common import ExampleError, ExampleParser, guide_names

__all__ = ["main"]

_EPILOG = """\
examples:
  pyro-cnf demo                          fit AutoCNF and AutoNormal to eight schools (~2 minutes)
  pyro-cnf list                          the examples
  pyro-cnf run eight_schools --smoke     a run of a few seconds
  pyro-cnf run funnel --steps 1000 --guide cnf,normal --seed 1 --out results/funnel
  pyro-cnf run energies --help           an example's own options

Each run writes report.txt, PNG figures and (with ArviZ) <guide>.nc files into --out.
"""


def _parser() -> ExampleParser:
    parser = ExampleParser(
        prog="pyro-cnf",
        description="Continuous normalizing flows for Pyro: run the demo and the examples.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyro-cnf {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full traceback of an unexpected error (for bug reports)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands.add_parser(
        "demo",
        help="fit a CNF guide to eight schools and show its diagnostics (~2 minutes)",
        description="Fit AutoCNF and AutoNormal to the centered eight schools model (real data) "
        "for 1500 steps each, then compare both with the exact answer: KL(q||p), Pareto k-hat, "
        "E and sd of tau. Accepts every option of 'pyro-cnf run eight_schools' (see its --help).",
        add_help=False,
    )
    listing = commands.add_parser("list", help="list the examples", description="List examples.")
    listing.add_argument("--guides", action="store_true", help="also list the guide names")
    run = commands.add_parser(
        "run",
        help="run one example (options: pyro-cnf run NAME --help)",
        description="Run one example. Common options (see 'pyro-cnf run NAME --help'): "
        "--steps N, --guide NAMES (or --flow), --seed S, --out DIR, --num-samples S, --smoke, "
        "--no-progress.",
    )
    run.add_argument(
        "example", metavar="NAME", nargs="?", help="example name (see 'pyro-cnf list')"
    )
    run.add_argument("options", nargs=argparse.REMAINDER, default=[], help="the example's options")
    return parser


def _run_example(name: str, options: Sequence[str], prog: str) -> int:
    module = load_example(name)
    main = module.main
    if "prog" in inspect.signature(main).parameters:
        return int(main(list(options), prog=prog))
    return int(main(list(options)))


def _list(show_guides: bool) -> int:
    width = max(len(name) for name in example_names())
    print("examples (pyro-cnf run NAME [--smoke] [--steps N] [--guide G] [--seed S] [--out DIR]):")
    for name, description in example_names().items():
        print(f"  {name.ljust(width)}  {description}")
    if show_guides:
        guides = guide_names()
        width = max(len(name) for name in guides)
        print("\nguides (--guide NAME[,NAME...]):")
        for name, description in guides.items():
            print(f"  {name.ljust(width)}  {description}")
    return 0


def _dispatch(args: Any, extra: list[str]) -> int:
    if args.command == "list":
        return _list(args.guides)
    if args.command == "demo":
        if any(option in ("-h", "--help") for option in extra):
            from .examples import eight_schools

            return eight_schools.main(["--help"], prog="pyro-cnf demo")
        from .examples.eight_schools import DEMO_ARGS

        print(
            "pyro-cnf demo: AutoCNF and AutoNormal on the centered eight schools model, 2000 SVI "
            "steps each, then importance diagnostics against the exact answer (about two "
            "minutes)",
            file=sys.stderr,
            flush=True,
        )
        options = [*DEMO_ARGS, "--out", "pyro-cnf-out/demo", *extra]
        return _run_example("eight_schools", options, "pyro-cnf demo")
    if args.example is None:
        raise _UsageError(
            f"run needs an example name; valid examples: {', '.join(example_names())}"
        )
    if args.example not in example_names():
        raise _UsageError(
            f"unknown example {args.example!r}; valid examples: {', '.join(example_names())}"
        )
    return _run_example(args.example, args.options, f"pyro-cnf run {args.example}")


class _UsageError(Exception):
    """Bad command-line input found after parsing (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-cnf`` command; returns the exit status.

    Arguments:
        argv: The arguments (default ``sys.argv[1:]``).

    Example:
        >>> main(["list"])  # doctest: +ELLIPSIS
        examples (...):
          eight_schools ...
        0
    """
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "demo":  # only the demo passes unknown options on
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help, --version, and usage errors (already printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    try:
        return _dispatch(args, extra)
    except SystemExit as exit_:  # an example's own argparse: --help or a usage error
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    except _UsageError as error:
        print(f"pyro-cnf: error: {error}", file=sys.stderr)
        return 2
    except (ExampleError, ValueError) as error:
        print(f"pyro-cnf: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyro-cnf: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.traceback:
            raise
        print(
            f"pyro-cnf: error: {type(error).__name__}: {error} "
            "(rerun with 'pyro-cnf --traceback ...' for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
