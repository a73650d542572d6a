"""The examples behind ``pyro-cnf run``: each a module with ``main(argv) -> int``.

Each example is also a script in the repository's ``examples/`` folder (a thin wrapper that calls
the module here), so it runs from a source checkout (``python examples/funnel.py --smoke``) and,
installed, from the ``pyro-cnf`` command (``pyro-cnf run funnel --smoke``).

Example:
    >>> {"eight_schools", "funnel", "energies"} <= set(example_names())
    True
    >>> callable(load_example("funnel").main)
    True
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["example_names", "load_example"]

_EXAMPLES: dict[str, str] = {
    "eight_schools": "centered eight schools: AutoCNF vs Pyro's guides vs the exact answer",
    "funnel": "Neal's funnel (10-D): AutoCNF vs Pyro's guides, sd(v) against the exact 3",
    "energies": "banana and the Rezende-Mohamed energies: target vs fitted density figures",
    "logistic_regression": "Bayesian logistic regression on breast-cancer data vs NUTS",
    "conditional": "a conditional density p(x | c) with a ConditionalCNF, against the exact one",
    "density_anomaly": "density estimation and anomaly detection",
}


def _available(name: str) -> bool:
    return (
        importlib.util.find_spec(f"{__name__}.{name}") is not None
        or _checkout_script(name).is_file()
    )


def example_names() -> dict[str, str]:
    """Every example this installation has, by name, with a one-line description."""
    return {name: text for name, text in _EXAMPLES.items() if _available(name)}


def _checkout_script(name: str) -> Path:
    return Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"


def load_example(name: str) -> ModuleType:
    """The module of the example called ``name`` (it has ``main(argv=None) -> int``).

    An example is looked up in this package first; an example that only exists as a script in
    the ``examples/`` folder of a source checkout is loaded from there.

    Raises:
        ValueError: For an unknown name (the message lists the valid ones), or an example that
            this installation does not contain.
    """
    if name not in _EXAMPLES:
        valid = ", ".join(example_names())
        raise ValueError(f"unknown example {name!r}; valid examples: {valid}")
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    script = _checkout_script(name)
    if script.is_file():
        spec = importlib.util.spec_from_file_location(f"pyro_cnf_example_{name}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    raise ValueError(f"example {name!r} is not part of this installation")
