"""``maskc calibrate``: measure the cost model's constants on this machine's GPU and write its profile.

The measuring and fitting are :mod:`maskc.measure.calibrate` and :mod:`maskc.measure.fit`,
imported when the command runs, so ``import maskc.cli.main`` pays for neither them nor torch.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from maskc import cost
from maskc.cli.errors import UserError
from maskc.runtime.format import DTYPES, atomic_write


def _csv(kind, allowed=None):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list") from None
        bad = [v for v in items if allowed is not None and v not in allowed]
        if not items or bad:
            raise click.BadParameter(f"{value!r}: choose from {', '.join(map(str, allowed))}" if allowed else f"{value!r} is empty")
        return items

    return convert


@click.command("calibrate")
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N, or cpu (a pipeline check: needs --quick; the numbers mean nothing).")
@click.option("--quick", is_flag=True, help="Fewer, smaller measurements (GPU: bf16 and head dim 128 only, shorter timings).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the profile.  [default on a GPU: maskc/profiles/<GPU name>.json; required on a CPU]")
@click.option("--dtypes", callback=_csv(str, DTYPES), help="Comma-separated dtypes.  [default: bf16,fp16; fp32 on a CPU]")
@click.option("--head-dims", callback=_csv(int), help="Comma-separated head dims.  [default: 64,128; 32 on a CPU]")
@click.option("--blocks", callback=_csv(int, (64, 128)), help="Comma-separated square tile sizes.  [default: 64,128]")
@click.option("--kernels", callback=_csv(str, cost.KERNELS), help=f"Tile kernels to measure.  [default: {','.join(cost.KERNELS)}]")
@click.option("--backend", type=click.Choice(["auto", "triton", "reference"]), default="auto", show_default=True,
              help="maskc backend: auto = Triton on CUDA, the reference backend on a CPU.")
@click.option("--only", "parts", callback=_csv(str, ("kernels", "reorder", "sdpa", "pieces")),
              help="Measure only these parts: kernels, reorder, sdpa, pieces (with --merge, keep the rest of the output profile).  [default: all]")
@click.option("--passes", callback=_csv(str, cost.PASSES),
              help="Tile-kernel passes to measure: fwd, bwd (with --merge, keep the other pass's fits).  [default: both]")
@click.option("--merge", is_flag=True, help="Keep the entries of an existing output profile that this run does not measure again.")
@click.option("--refit", type=click.Path(dir_okay=False, path_type=Path),
              help="Measure nothing: fit the constants of this profile again to the measurements it records (no GPU needed).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def calibrate(device: str, quick: bool, output: Path | None, dtypes, head_dims, blocks, kernels, backend: str, parts, passes,
              merge: bool, refit: Path | None, quiet: bool) -> None:
    """Measure this device's cost-model constants and write its profile (JSON).

    Times synthetic plans (full and partial tiles per list, balanced and unbalanced), reordered
    plans against the same lists without their permutation, dense SDPA, forward and backward, and
    the backward through dense pieces, and fits the constants of maskc's cost model by least
    squares. The profile records the device, versions, date and fit residuals.
    """
    if refit is not None:
        _refit(refit, output or refit)
        return
    cpu = device.startswith("cpu")
    if cpu and not quick:
        raise UserError("a CPU run only checks the pipeline (its numbers mean nothing): use --device cpu --quick")
    if cpu and output is None:
        raise UserError("--output is required on a CPU, so a CPU profile never lands among the GPU profiles")
    if output is not None and not output.parent.is_dir():
        raise UserError(f"output directory does not exist: {output.parent}")

    from maskc.measure.calibrate import CalibrateConfig, merge_profiles  # imports torch
    from maskc.measure.calibrate import calibrate as run

    cfg = CalibrateConfig.for_device(device, quick)
    if backend != "auto":
        cfg.backend = backend
    for name, value in (("dtypes", dtypes), ("head_dims", head_dims), ("blocks", blocks), ("kernels", kernels), ("parts", parts), ("passes", passes)):
        if value is not None:
            setattr(cfg, name, value)

    def say(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    try:
        profile = run(cfg, progress=say, command=shlex.join(["maskc", *sys.argv[1:]]))
    except cost.ProfileError as e:
        raise UserError(str(e)) from None
    if output is None:
        cost.PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        output = cost.PROFILE_DIR / cost.profile_filename(profile["device"]["name"])
    if merge and output.is_file():
        try:
            profile = merge_profiles(json.loads(output.read_text()), profile)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--merge: {output} cannot be merged: {e}") from None
    _write(output, profile)


def _refit(source: Path, output: Path) -> None:
    from maskc.measure.fit import refit

    try:
        profile = refit(json.loads(source.read_text()))
    except OSError as e:
        raise UserError(f"--refit: cannot read {source}: {e.strerror or e}") from None
    except (ValueError, cost.ProfileError) as e:
        raise UserError(f"--refit: {source} is not a profile with its measurements: {e}") from None
    if not output.parent.is_dir():
        raise UserError(f"output directory does not exist: {output.parent}")
    _write(output, profile)


def _write(output: Path, profile: dict) -> None:
    atomic_write(output, (json.dumps(profile, indent=1) + "\n").encode())
    worst = max((e["fit"]["rms_rel_error"] for e in profile["kernels"]), default=float("nan"))
    click.echo(f"wrote {output}: {profile['device']['name']} ({profile['device']['kind']}), {len(profile['kernels'])} kernel fits "
               f"(worst rms error {worst:.1%}), {len(profile['reorder'])} reordering, {len(profile['sdpa'])} SDPA fits"
               + (f"; {len(profile['notes'])} notes" if profile["notes"] else ""))
