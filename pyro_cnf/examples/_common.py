"""What the examples share: options, guides, fitting, importance diagnostics, reports, figures.

Private: the examples and the ``pyro-cnf`` command use it; its names may change.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal
from pyro.infer.importance import vectorized_importance_weights
from torch import Tensor

from ..infer import AutoCNF, AutoFlow, FitError, FitResult, ImportanceDiagnostics, fit_svi
from ..infer import importance_diagnostics as _importance_diagnostics
from ..infer.diagnostics import exact_scoring
from ..models import get_model
from ..transforms.registry import flow_names

__all__ = [
    "ExampleError",
    "ExampleParser",
    "GuideRun",
    "add_common_arguments",
    "float64",
    "guide_names",
    "make_guide",
    "parse_guides",
    "prepare_output",
    "run_guide",
]


class ExampleError(Exception):
    """A problem the user can fix (bad option value, unwritable folder, missing extra).

    The examples and the ``pyro-cnf`` command print its message as one line and exit with 1.
    """


class ExampleParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``prog: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and a hint, on one line, and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    name: str,
    steps: int,
    guides: str | None,
    num_samples: int = 10_000,
) -> None:
    """Options every example takes: steps, guides, seed, output folder, smoke mode, progress."""
    parser.add_argument(
        "--steps", type=positive_int, default=None, help=f"optimization steps (default {steps})"
    )
    if guides is not None:
        parser.add_argument(
            "--guide",
            "--guides",
            "--flow",
            dest="guides",
            default=guides,
            metavar="NAMES",
            help=f"comma-separated guides to fit (default {guides}); see 'pyro-cnf list --guides'",
        )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("pyro-cnf-out") / name,
        metavar="DIR",
        help=f"output folder for the report and figures (default pyro-cnf-out/{name})",
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        default=None,
        metavar="S",
        help=f"importance draws for the diagnostics (default {num_samples})",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few steps and draws: checks that everything runs (numbers mean nothing)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve(value: Any, full: Any, smoke: Any, is_smoke: bool) -> Any:
    """An option's value: given explicitly, else its smoke or full default."""
    if value is not None:
        return value
    return smoke if is_smoke else full


# ---------------------------------------------------------------------------------------------
# Guides
# ---------------------------------------------------------------------------------------------

_PYRO_GUIDES = {
    "normal": "Pyro's AutoNormal (diagonal Normal)",
    "mvn": "Pyro's AutoMultivariateNormal (full-covariance Normal)",
    "pyro-iaf": "Pyro's AutoIAFNormal (2 IAF layers)",
}


def guide_names() -> dict[str, str]:
    """Every guide name the examples accept, with a description."""
    names = {"cnf": "pyro_cnf.AutoCNF (continuous normalizing flow)"}
    names.update(_PYRO_GUIDES)
    for flow in flow_names():
        if flow != "cnf":
            names[flow] = f"pyro_cnf.AutoFlow(model, {flow!r})"
    return names


def parse_guides(text: str) -> list[str]:
    """Split ``"cnf,normal"`` into names, checking each one.

    Raises:
        ExampleError: On an empty list or an unknown name (the message lists the valid ones).
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ExampleError("no guide given")
    valid = guide_names()
    for guide in names:
        if guide not in valid:
            raise ExampleError(f"unknown guide {guide!r}; valid guides: {', '.join(valid)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class GuideSettings:
    """How one guide is fitted: learning rate, particles, initial scale, annealed fraction.

    ``anneal_fraction`` of the steps anneal the target (``fit_svi``'s ``anneal_steps``).
    ``AutoCNF`` is always built with its defaults, ``AutoCNF(model)``.
    """

    lr: float = 0.01
    particles: int = 16
    init_scale: float = 0.1
    anneal_fraction: float = 0.0


def default_settings(guide: str) -> GuideSettings:
    """The settings ``docs/benchmarks.md`` used for each kind of guide."""
    if guide in ("normal", "mvn"):
        return GuideSettings(lr=0.01)
    if guide == "cnf":
        return GuideSettings(lr=0.01, particles=4)
    return GuideSettings(lr=0.005)


def make_guide(guide: str, model: Callable[..., Any], settings: GuideSettings) -> Any:
    """Build the guide called ``guide`` (see :func:`guide_names`) for ``model``."""
    if guide == "cnf":
        return AutoCNF(model)
    if guide == "normal":
        return AutoNormal(model, init_scale=settings.init_scale)
    if guide == "mvn":
        return AutoMultivariateNormal(model, init_scale=settings.init_scale)
    if guide == "pyro-iaf":
        return AutoIAFNormal(model, num_transforms=2)
    return AutoFlow(model, guide, init_scale=settings.init_scale)


def plate_nesting(model: Callable[..., Any]) -> int:
    """How many plate dims the model uses (so vectorized particles need no guessing)."""
    trace = poutine.block(poutine.trace(model).get_trace)()
    return max(
        (
            -frame.dim
            for site in trace.nodes.values()
            for frame in site.get("cond_indep_stack", ())
            if frame.vectorized and frame.dim is not None
        ),
        default=0,
    )


@dataclass
class GuideRun:
    """One fitted guide and what the examples report about it.

    Attributes:
        name: Guide name (see :func:`guide_names`).
        guide: The fitted guide.
        fit: ``fit_svi``'s result.
        diagnostics: ``importance_diagnostics`` of the fitted guide.
        draws: The guide's own draws ``{site: (S, *shape)}`` (not importance-resampled).
        settings: How it was built and fitted.
    """

    name: str
    guide: Any
    fit: FitResult
    diagnostics: ImportanceDiagnostics
    draws: dict[str, Tensor] = field(repr=False)
    settings: GuideSettings = field(default_factory=GuideSettings)

    def kl(self, log_z: float | None) -> float | None:
        r""":math:`\mathrm{KL}(q \| p) = \log Z - \mathrm{ELBO}` when log Z is known."""
        return None if log_z is None else log_z - self.diagnostics.elbo


@torch.no_grad()
def guide_draws(
    model: Callable[..., Any], guide: Any, sites: dict[str, torch.Size], num_samples: int
) -> dict[str, Tensor]:
    """``num_samples`` draws of ``sites`` from the guide (pushed through the model), ``(S, *shape)``.

    The guide's own, unweighted draws (``pyro.deterministic`` sites included), in one vectorized
    pass with the particle dimension left of every plate.
    """
    with exact_scoring(guide):  # the guide's evaluation solver
        _, model_trace, _ = vectorized_importance_weights(
            model, guide, num_samples=num_samples, max_plate_nesting=plate_nesting(model)
        )
    return {
        name: model_trace.nodes[name]["value"].reshape(num_samples, *shape)
        for name, shape in sites.items()
    }


def run_guide(
    guide_name: str,
    model: Callable[..., Any],
    *,
    steps: int,
    seed: int,
    num_samples: int,
    sites: dict[str, torch.Size],
    settings: GuideSettings | None = None,
    progress: bool = True,
) -> GuideRun:
    """Build, fit and diagnose one guide.

    ClippedAdam (clip norm 10) with the learning rate decaying 10x over the run and
    ``Trace_ELBO`` with vectorized particles, as in ``docs/benchmarks.md``.
    """
    settings = default_settings(guide_name) if settings is None else settings
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide(guide_name, model, settings)
    optimizer = pyro.optim.ClippedAdam(
        {"lr": settings.lr, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0}
    )
    loss = Trace_ELBO(
        num_particles=settings.particles,
        vectorize_particles=True,
        max_plate_nesting=plate_nesting(model),
    )
    if progress:
        print(f"fitting {guide_name} ({steps} steps)", file=sys.stderr, flush=True)
    fit = fit_svi(
        model,
        guide,
        num_steps=steps,
        optimizer=optimizer,
        loss=loss,
        anneal_steps=int(settings.anneal_fraction * steps),
        seed=seed,
        progress=progress,
    )
    diagnostics = _importance_diagnostics(model, guide, num_samples=num_samples, seed=seed)
    draws = guide_draws(model, guide, sites, num_samples)
    return GuideRun(guide_name, guide, fit, diagnostics, draws, settings)


def fit_guides(
    model: Callable[..., Any],
    guides: Sequence[str],
    *,
    steps: int,
    seed: int,
    num_samples: int,
    settings: Callable[[str], GuideSettings],
    progress: bool,
    sites: dict[str, torch.Size] | None = None,
) -> tuple[list[GuideRun], list[str]]:
    """Fit and diagnose each guide in turn; one failing (e.g. a ``FitError``) does not stop the rest.

    Returns:
        The runs that finished, and one line per guide that failed.
    """
    if sites is None:
        sites = {name: value.shape for name, value in model.reference.mean.items()}
    runs: list[GuideRun] = []
    failures: list[str] = []
    for guide in guides:
        try:
            runs.append(
                run_guide(
                    guide,
                    model,
                    steps=steps,
                    seed=seed,
                    num_samples=num_samples,
                    sites=sites,
                    settings=settings(guide),
                    progress=progress,
                )
            )
        except (FitError, ValueError) as error:
            failures.append(f"{guide}: failed: {error}")
    return runs, failures


def comparison_table(runs: Sequence[GuideRun], reference: Any, focus: str) -> str:
    """KL, k-hat, ESS, log Z and the focus site's mean and sd (q and IS) per guide, plus the reference."""
    log_z = reference.log_Z
    rows = []
    for run in runs:
        d = run.diagnostics
        q, weighted = run.draws[focus], d.draws[focus]
        q = q.reshape(q.shape[0], -1)[:, 0]
        weighted = weighted.reshape(weighted.shape[0], -1)[:, 0]
        mean_err, sd_err = max_errors(run.draws, reference.mean, reference.sd)
        rows.append(
            [
                run.name,
                fmt(run.kl(log_z)),
                f"{d.khat:.2f}",
                verdict(d.khat, d.khat_threshold),
                f"{d.ess:.0f}",
                f"{d.log_evidence:.3f} ± {d.log_evidence_se:.3f}",
                f"{float(q.mean()):.3f}",
                f"{float(q.std()):.3f}",
                f"{float(weighted.mean()):.3f}",
                f"{float(weighted.std()):.3f}",
                f"{mean_err:.2f}",
                f"{sd_err:.2f}",
                f"{run.fit.wall_time:.0f}",
            ]
        )
    ref_mean = float(reference.mean[focus].flatten()[0])
    ref_sd = float(reference.sd[focus].flatten()[0])
    rows.append(
        [
            "reference",
            "0" if log_z is not None else "n/a",
            "-",
            "-",
            "-",
            fmt(log_z),
            f"{ref_mean:.3f}",
            f"{ref_sd:.3f}",
            f"{ref_mean:.3f}",
            f"{ref_sd:.3f}",
            "0",
            "0",
            "-",
        ]
    )
    label = focus if reference.mean[focus].numel() == 1 else f"{focus}[0]"
    header = [
        "guide",
        "KL(q||p)",
        "k-hat",
        "verdict",
        "ESS",
        "log Z (IS)",
        f"E[{label}] q",
        f"sd({label}) q",
        f"E[{label}] IS",
        f"sd({label}) IS",
        "mean err",
        "sd err",
        "fit s",
    ]
    return table(header, rows)


READING_GUIDE = """\
KL(q||p) = log Z - ELBO against the reference log Z. k-hat: Pareto k of the importance weights
(< 0.5 good, < 0.7 usable, above: the guide misses posterior mass). 'q': the guide's own draws;
'IS': importance-resampled draws. mean err / sd err: the largest |E - E_ref| / sd_ref and
|sd / sd_ref - 1| over every coordinate of every site (guide's own draws)."""


def finish(
    model: Callable[..., Any],
    runs: Sequence[GuideRun],
    report: str,
    out: Path,
    figures: Sequence[Path],
    num_samples: int,
    seed: int = 0,
) -> int:
    """Add the ArviZ part, write ``report.txt`` and the InferenceData, print the report; exit status."""
    written = list(figures)
    if runs and arviz_available():
        parts = []
        for run in runs:
            path, summary = write_inference_data(model, run, out, num_samples, seed)
            if path is not None:
                written.append(path)
            parts.append(f"ArviZ summary ({run.name}, guide draws):\n{summary}")
        report = report + "\n\n" + "\n\n".join(parts)
    elif runs:
        report += (
            "\n\n(No InferenceData written: pyro_cnf.arviz or ArviZ is not available; the "
            "numbers above come from pyro_cnf.importance_diagnostics.)"
        )
    written.insert(0, write_report(out, report))
    print(report)
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0 if runs else 1


# ---------------------------------------------------------------------------------------------
# Output: folder, report, figures, InferenceData
# ---------------------------------------------------------------------------------------------


def prepare_output(path: Path) -> Path:
    """Create the output folder and check that it is writable.

    Raises:
        ExampleError: If the folder cannot be created or written to.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".pyro-cnf-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ExampleError(f"cannot write to the output folder {str(path)!r}: {reason}") from None
    return path


def new_figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` and its axes grid, without pyplot (no global backend state).

    Raises:
        ExampleError: If matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ExampleError(
            "the figures need matplotlib: pip install 'pyro-cnf[examples]'"
        ) from None
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def save_figure(figure: Any, path: Path) -> Path:
    """Write a figure as PNG."""
    figure.savefig(path, dpi=110)
    return path


Box = tuple[tuple[float, float], tuple[float, float]]


def grid_2d(box: Box, num: int = 120) -> tuple[Tensor, Tensor]:
    """A ``num x num`` grid over ``box``: the two coordinate tensors, shape ``(num, num)``."""
    (x_lo, x_hi), (y_lo, y_hi) = box
    xs = torch.linspace(x_lo, x_hi, num)
    ys = torch.linspace(y_lo, y_hi, num)
    return torch.meshgrid(xs, ys, indexing="xy")


def density_panel(
    ax: Any,
    box: Box,
    log_density: Callable[[Tensor, Tensor], Tensor] | None = None,
    draws: tuple[Tensor, Tensor] | None = None,
    title: str = "",
    labels: tuple[str, str] = ("", ""),
    filled: bool = False,
    num: int = 120,
) -> None:
    """Draw a (possibly unnormalized) 2-D density as contours or an image, and/or draws as dots."""
    if log_density is not None:
        x, y = grid_2d(box, num)
        with torch.no_grad():
            log_p = log_density(x, y)
        density = (log_p - log_p[torch.isfinite(log_p)].max()).exp().nan_to_num(0.0)
        if filled:
            ax.pcolormesh(x.numpy(), y.numpy(), density.numpy(), shading="auto", cmap="viridis")
        else:
            levels = [math.exp(-0.5 * k**2) for k in (3, 2, 1)]  # 1, 2, 3 "sigma" contours
            ax.contour(x.numpy(), y.numpy(), density.numpy(), levels=levels, colors="k")
    if draws is not None:
        ax.scatter(draws[0][:2000].numpy(), draws[1][:2000].numpy(), s=2, alpha=0.3, color="C1")
    (x_lo, x_hi), (y_lo, y_hi) = box
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])


def arviz_available() -> bool:
    """Whether ``pyro_cnf.arviz`` and ArviZ itself can be imported (imports ArviZ quietly)."""
    try:
        import pyro_cnf.arviz  # noqa: F401

        with warnings.catch_warnings():
            # ArviZ 0.23 announces its 1.x refactor on import: noise in a command's output
            warnings.filterwarnings("ignore", "\\s*ArviZ is undergoing", FutureWarning)
            import arviz  # noqa: F401
    except ImportError:
        return False
    return True


def has_observations(model: Callable[..., Any]) -> bool:
    """Whether the model has an observed sample site (``pyro.factor`` sites do not count)."""
    trace = poutine.block(poutine.trace(model).get_trace)()
    return any(
        site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("_deterministic", False)
        and not site["infer"].get("is_auxiliary", False)
        and not site["name"].startswith("_")
        and type(site["fn"]).__name__ != "Unit"
        for site in trace.nodes.values()
    )


def write_inference_data(
    model: Callable[..., Any],
    run: GuideRun,
    out: Path,
    num_samples: int,
    seed: int = 0,
    stem: str | None = None,
) -> tuple[Path | None, str]:
    """Write the guide's posterior as ArviZ InferenceData (netcdf) and return its summary text.

    Uses ``pyro_cnf.arviz.to_inference_data``; without that module (or ArviZ) nothing is
    written and the text says so.
    """
    if not arviz_available():
        return None, "(ArviZ summary skipped: pyro_cnf.arviz or arviz is not available)"
    import arviz as az

    from pyro_cnf.arviz import to_inference_data

    idata = to_inference_data(
        model,
        run.guide,
        num_samples=num_samples,
        seed=seed,
        log_likelihood=has_observations(model),
        losses=run.fit,
    )
    path = out / f"{stem or run.name}.nc"
    idata.to_netcdf(str(path))
    summary = az.summary(idata, kind="stats")
    return path, summary.to_string()


# ---------------------------------------------------------------------------------------------
# Numbers and text
# ---------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table ('n/a' for None, 'inf' kept)."""
    if value is None:
        return "n/a"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.{digits}f}"


def verdict(khat: float, threshold: float) -> str:
    """Pareto k-hat read as Yao et al. (2018) suggest."""
    return "good" if khat < 0.5 else "usable" if khat < threshold else "poor"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    body = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([line, "-" * len(line), *body])


def max_errors(
    draws: dict[str, Tensor], mean: dict[str, Tensor], sd: dict[str, Tensor]
) -> tuple[float, float]:
    """Largest ``|E - E_ref| / sd_ref`` and ``|sd / sd_ref - 1|`` over every site and coordinate."""
    mean_error, sd_error = 0.0, 0.0
    for site, values in draws.items():
        if site not in mean:
            continue
        ref_mean, ref_sd = mean[site].to(values.dtype), sd[site].to(values.dtype)
        mean_error = max(mean_error, float(((values.mean(0) - ref_mean).abs() / ref_sd).max()))
        sd_error = max(sd_error, float((values.std(0) / ref_sd - 1).abs().max()))
    return mean_error, sd_error


def write_report(out: Path, text: str) -> Path:
    """Write ``report.txt`` in ``out``."""
    path = out / "report.txt"
    path.write_text(text.rstrip() + "\n")
    return path


@contextmanager
def float64() -> Iterator[None]:
    """Run in float64 (the references and the diagnostics are float64), then restore the dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def run_guide_comparison(
    args: Any,
    model_name: str,
    title: str,
    focus: str,
    steps: tuple[int, int],
    samples: tuple[int, int],
    settings: Callable[[str, bool], GuideSettings],
    figure: Callable[[Sequence[GuideRun], Path], Path],
) -> int:
    """The body shared by the zoo examples that compare guides against an exact reference.

    Fits every guide of ``args.guides`` to the zoo model, writes the report (the comparison table
    with ``focus`` as the highlighted site), the figure and the InferenceData; ``steps`` and
    ``samples`` are ``(full, smoke)`` defaults.
    """
    guides = parse_guides(args.guides)
    out = prepare_output(args.out)
    num_steps = resolve(args.steps, *steps, args.smoke)
    num_samples = resolve(args.num_samples, *samples, args.smoke)
    model = get_model(model_name)
    runs, failures = fit_guides(
        model,
        guides,
        steps=num_steps,
        seed=args.seed,
        num_samples=num_samples,
        settings=lambda guide: settings(guide, args.smoke),
        progress=not args.no_progress,
    )
    report = "\n".join(
        [
            title,
            f"reference: {model.reference.kind}",
            f"steps {num_steps}, seed {args.seed}, S = {num_samples} importance draws"
            + ("  [SMOKE RUN: the numbers mean nothing]" if args.smoke else ""),
            "",
            comparison_table(runs, model.reference, focus),
            *failures,
            "",
            READING_GUIDE,
        ]
    )
    figures = [figure(runs, out)] if runs else []
    return finish(model, runs, report, out, figures, num_samples, args.seed)


@contextmanager
def one_thread() -> Iterator[None]:
    """Use one intra-op thread inside the block, restoring the count after it.

    The examples' tensors are small (tens of dimensions, a few particles): a second OpenMP
    thread gains nothing on them, and when another process keeps a core busy it makes each
    operation wait for the busy core, which slowed a field evaluation 70x on a 2-core machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_main(body: Callable[[], int]) -> int:
    """Run an example's body in float64 on one thread (:func:`one_thread`).

    A user-fixable problem becomes one line on stderr and status 1.
    """
    start = time.perf_counter()
    try:
        with float64(), one_thread():
            status = body()
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return status
