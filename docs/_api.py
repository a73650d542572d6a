"""Generate the API reference pages (``docs/api/*.rst``) from the public modules' ``__all__``.

Run by ``conf.py`` at the start of every build (and by ``tests/test_docs.py``), so a name added
to an ``__all__`` gets its page entry without anyone editing the docs. Each object is documented
once: under ``pyro_cnf.<name>`` when the package root exports it, otherwise under the public
module that lists it.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

# (module, page title); the package root first. A module that cannot be imported is skipped.
MODULES: list[tuple[str, str]] = [
    ("pyro_cnf", "pyro_cnf: the public namespace"),
    ("pyro_cnf.transforms", "pyro_cnf.transforms: every flow layer and factory"),
    ("pyro_cnf.infer", "pyro_cnf.infer: guides, fitting, diagnostics"),
    ("pyro_cnf.infer.training", "pyro_cnf.infer.training: the training loop and several processes"),
    ("pyro_cnf.models", "pyro_cnf.models: the model zoo with reference answers"),
    ("pyro_cnf.arviz", "pyro_cnf.arviz: ArviZ integration"),
    ("pyro_cnf.reference", "pyro_cnf.reference: comparison with a reference posterior"),
    ("pyro_cnf.anomaly", "pyro_cnf.anomaly: anomaly detection"),
    ("pyro_cnf.datasets", "pyro_cnf.datasets: toy data sets"),
    ("pyro_cnf.nn", "pyro_cnf.nn: vector fields"),
    ("pyro_cnf.divergence", "pyro_cnf.divergence: trace strategies"),
    ("pyro_cnf.ode", "pyro_cnf.ode: solvers"),
    ("pyro_cnf.distributions", "pyro_cnf.distributions: flow distributions"),
    ("pyro_cnf.cli", "pyro_cnf.cli: the pyro-cnf command"),
]

# Titles of the groups on the package-root page, by the module that defines the objects.
GROUPS: dict[str, str] = {
    "pyro_cnf.transforms.continuous": "Continuous normalizing flows",
    "pyro_cnf.transforms.registry": "The flow registry",
    "pyro_cnf.transforms.compose": "Flow stacks",
    "pyro_cnf.distributions": "Flow distributions",
    "pyro_cnf.nn": "Vector fields",
    "pyro_cnf.divergence": "Trace strategies",
    "pyro_cnf.ode": "ODE solvers",
    "pyro_cnf.infer.guides": "Guides for SVI",
    "pyro_cnf.infer.amortized": "Guides for SVI",
    "pyro_cnf.infer.fit": "Fitting a guide",
    "pyro_cnf.infer.objectives": "Objectives",
    "pyro_cnf.infer.diagnostics": "Importance diagnostics",
    "pyro_cnf.infer.density": "Density estimation",
    "pyro_cnf.infer.flow_matching": "Flow matching",
    "pyro_cnf.arviz": "ArviZ",
    "pyro_cnf.reference": "Comparison with a reference posterior",
    "pyro_cnf.anomaly": "Anomaly detection",
    "pyro_cnf.datasets": "Toy data sets",
}


def _directive(obj: object) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "autoexception"
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _entry(directive: str, target: str) -> list[str]:
    lines = [f".. {directive}:: {target}"]
    if directive == "autoclass":
        lines += ["   :members:", "   :show-inheritance:"]
    return lines + [""]


def _heading(text: str, mark: str) -> list[str]:
    return [text, mark * len(text), ""]


def generate(out_dir: Path) -> dict[str, list[str]]:
    """Write one ``.rst`` page per public module, and ``index.rst``; return ``{module: names}``.

    The returned names are the fully qualified targets documented on each page.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    documented: dict[int, str] = {}
    pages: dict[str, list[str]] = {}
    toctree: list[str] = []
    for module_name, title in MODULES:
        module = _import(module_name)
        if module is None:
            continue
        names = list(getattr(module, "__all__", []))
        lines = _heading(title, "=")
        lines += [f".. automodule:: {module_name}", "   :no-members:", ""]
        targets: list[str] = []
        if module_name == "pyro_cnf":
            groups: dict[str, list[str]] = {}
            for name in names:
                owner = getattr(getattr(module, name), "__module__", module_name)
                groups.setdefault(owner, []).append(name)
            order = [m for m in GROUPS if m in groups] + sorted(set(groups) - set(GROUPS))
            for owner in order:
                lines += _heading(GROUPS.get(owner, owner), "-")
                for name in sorted(groups[owner], key=str.lower):
                    obj = getattr(module, name)
                    documented[id(obj)] = f"pyro_cnf.{name}"
                    lines += _entry(_directive(obj), f"pyro_cnf.{name}")
                    targets.append(f"pyro_cnf.{name}")
        else:
            rest = [name for name in names if id(getattr(module, name)) not in documented]
            elsewhere = [name for name in names if name not in rest]
            if elsewhere:
                links = ", ".join(f":obj:`{documented[id(getattr(module, n))]}`" for n in elsewhere)
                lines += [f"Also exported here, documented in the package root: {links}.", ""]
            for name in sorted(rest, key=str.lower):
                obj = getattr(module, name)
                documented[id(obj)] = f"{module_name}.{name}"
                lines += _entry(_directive(obj), f"{module_name}.{name}")
                targets.append(f"{module_name}.{name}")
        page = module_name.replace(".", "_")
        (out_dir / f"{page}.rst").write_text("\n".join(lines))
        pages[module_name] = targets
        toctree.append(page)
    index = _heading("API reference", "=")
    index += [
        "Generated from each public module's ``__all__``; every object is documented once, "
        "under the package root when it exports it.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *[f"   {page}" for page in toctree],
        "",
    ]
    (out_dir / "index.rst").write_text("\n".join(index))
    return pages
