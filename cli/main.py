"""The ``maskc`` command: thin wrappers over the compiler and the runtime.

User errors (a missing file, a malformed mask, a corrupted plan, a bad option) print one
``Error: ...`` line and exit with status 2; nothing here prints a traceback for them.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import click
import numpy as np

from maskc import __version__
from maskc.cli.bench_cmd import bench
from maskc.cli.calibrate_cmd import calibrate
from maskc.cli.cache_cmd import cache
from maskc.cli.errors import UserError
from maskc.cli.files import check_output_dir, human_bytes, write_file
from maskc.cli.inspect_cmd import inspect
from maskc.cli.mask_cmd import mask
from maskc.cli.shard_cmd import shard
from maskc.errors import MaskError
from maskc.profile import ProfileError
from maskc.runtime.format import Plan, PlanError, encode, load


class _Group(click.Group):
    """Turns library errors into one-line user errors, and click's usage errors into one line too."""

    def main(self, *args, **kwargs):
        if kwargs.pop("standalone_mode", True) is False:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (MaskError, PlanError, ProfileError) as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise UserError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="maskc")
def cli() -> None:
    """maskc: compile attention masks into execution plans that skip what is masked."""


@cli.command("compile")
@click.argument("mask", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the plan.")
@click.option("--block", default="auto", show_default=True,
              help="Tile size BLOCK_MxBLOCK_N (each side 32, 64 or 128), or auto: the cost model's choice (128x128 without a profile).")
@click.option("--variant", type=click.Choice(["auto", "intervals", "block_sparse", "dense", "dense_causal"]), default="auto", show_default=True,
              help="How the mask runs: bitmaps, per-column row intervals (masks that fit), dense SDPA (all-true / causal masks), or auto.")
@click.option("--reorder", type=click.Choice(["auto", "rcm", "none"]), default="auto", show_default=True,
              help="Renumber the tokens by Reverse Cuthill-McKee: rcm always, auto when the cost model says it pays.")
@click.option("--schedule", type=click.Choice(["lpt", "none"]), default="lpt", show_default=True,
              help="Record the launch order of tile rows and columns, heaviest first (lpt), or not.")
@click.option("--backward", type=click.Choice(["auto", "tiles", "pieces"]), default="auto", show_default=True,
              help="Run the backward through the mask's dense pieces (at most 16 all-visible or causal rectangles) with cuDNN, "
                   "through the tile kernels, or as the cost model predicts faster.")
@click.option("--profile", "profile_name", help="Cost-model profile: a GPU name, a JSON path, or none.  [default: $MASKC_PROFILE, else the shipped H100 profile]")
@click.option("--workload", help="The call the predictions are for, e.g. batch=1,heads=16,kv_heads=4,head_dim=128,dtype=bf16.  [default: B=1 H=16 D=128 bf16]")
@click.option("--flashmask", type=click.Choice(["causal", "bidirectional"]),
              help="MASK is a FlashMask startend_row_indices .npy ([B, H, Nk, 1|2|4]) with this causal flag.")
@click.option("--cache/--no-cache", default=True, show_default=True, help="Reuse a plan compiled before for the same mask and options.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def compile_cmd(mask: Path, output: Path, block: str, variant: str, reorder: str, schedule: str, backward: str,
                profile_name: str | None, workload: str | None, flashmask: str | None, cache: bool, quiet: bool) -> None:
    """Compile MASK into a plan file.

    MASK is a dense .npy, a scipy.sparse .npz, or a .json mask spec such as
    {"kind": "documents", "lengths": [4096, 1000], "causal": true} (see the README); or a .json
    family spec such as {"family": "documents", "max_len": 16384, "causal": true}, for masks that
    change every step: the family plan is bound to each step's data at run time.
    """
    from maskc.cache import CacheWarning, Compiled, PlanCache
    from maskc.compiler import compile_with
    from maskc.family import is_family_spec
    from maskc.inputs import open_mask
    from maskc.options import CompileOptions
    from maskc.profile import Workload
    from maskc.spec import from_spec, read_json

    options = CompileOptions.of(block=block, variant=variant, reorder=reorder, schedule=schedule, backward=backward, profile=profile_name,
                                workload=Workload.parse(workload) if workload else None)
    check_output_dir(output)
    if flashmask is not None:
        from maskc.flashmask import load_startend_row_indices

        source = load_startend_row_indices(mask, causal=flashmask == "causal")
    elif mask.suffix.lower() == ".json" and mask.is_file():
        spec = read_json(mask, "the spec")
        if is_family_spec(spec):
            return _compile_family(spec, output, options, quiet)
        source = from_spec(spec, where=str(mask))
    else:
        source = open_mask(mask)
    with _progress(not quiet, "compiling") as progress, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        if cache:
            compiled = PlanCache().compile_with(source, options, progress)
        else:
            plan = compile_with(source, options, progress)
            compiled = Compiled(plan, encode(plan), False)
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
    write_file(output, compiled.data)
    if not quiet:
        plan, hit = compiled.plan, compiled.hit
        c = plan.tile_counts()
        chosen = _chosen(plan)
        click.echo(
            f"wrote {output}: {plan.q_len}x{plan.kv_len} mask, {plan.block_m}x{plan.block_n} tiles, {c['tiles_full']} full + {c['tiles_partial']} partial "
            f"of {c['tiles_total']} ({_pct(c['tiles_full'] + c['tiles_partial'], c['tiles_total'])} of dense work), "
            f"{plan.variant}{', reordered' if plan.reordered else ''}{', backward through dense pieces' if plan.arrays['pieces'].size else ''}, "
            f"{human_bytes(len(compiled.data))}{' (from cache)' if hit else ''}"
            + (f"; predicted {chosen}" if chosen else "")
        )


def _compile_family(spec: dict, output: Path, options, quiet: bool) -> None:
    """``maskc compile`` of a family spec: the family's decisions, made once, to a family plan."""
    from maskc.family import compile_family

    family = compile_family(spec, profile=options.profile or "none", workload=options.workload)
    data = encode(family)
    write_file(output, data)
    if not quiet:
        chosen = _chosen(family)
        click.echo(f"wrote {output}: {family!r}, {human_bytes(len(data))}" + (f"; predicted for a representative mask: {chosen}" if chosen else ""))


def _chosen(plan) -> str | None:
    """The winner's predicted times, as the plan recorded them."""
    from maskc.predictions import shown

    view = shown(plan.predictions)
    times = view.chosen_times if view is not None else None
    return f"fwd {times[0]:.3f} ms, fwd+bwd {times[1]:.3f} ms ({view.profile})" if times else None


@cli.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("mask", type=click.Path(dir_okay=False, path_type=Path))
def verify(plan_path: Path, mask: Path) -> None:
    """Exit 0 only if PLAN reproduces MASK bit for bit."""
    from maskc.verify import first_difference

    plan = load(plan_path)
    diff = first_difference(plan, mask)
    if diff is not None:
        click.echo(f"MISMATCH: {diff}", err=True)
        sys.exit(1)
    click.echo(f"ok: {plan_path} reproduces {mask} ({plan.visible_pairs} visible pairs)")


@cli.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--flashmask", "to_flashmask", is_flag=True, help="Write FlashMask's startend_row_indices (int32 [B, H, Nk, C]) as .npy.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The file to write.")
def export(plan_path: Path, to_flashmask: bool, output: Path) -> None:
    """Write PLAN's mask in another library's form (so far: --flashmask).

    The FlashMask form takes the fewest values per key column that hold the mask (causal 1 or 2,
    else bidirectional 2 or 4) and reports the causal flag to pass to flashmask_attention. A
    block-sparse plan exports only if its mask fits the column-interval form.
    """
    if not to_flashmask:
        raise UserError("choose the form to export: --flashmask (FlashMask's startend_row_indices)")
    if output.suffix.lower() != ".npy":
        raise UserError(f"--output must be a .npy file, got {output}")
    check_output_dir(output)
    from maskc.flashmask import to_startend_row_indices

    array, causal = to_startend_row_indices(load(plan_path))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_file(output, buffer.getvalue())
    click.echo(f"wrote {output}: FlashMask startend_row_indices {list(array.shape)} int32; call flashmask_attention(..., causal={causal})")


class _progress:
    """A click progress bar on a terminal, fed by the compiler's (done, total) callback; silent otherwise."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.bar = None

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr).__enter__()
        self.bar.update(done - self.bar.pos)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "0%"


cli.add_command(mask)
cli.add_command(inspect)
cli.add_command(cache)
cli.add_command(bench)
cli.add_command(calibrate)
cli.add_command(shard)


def main() -> None:
    cli(prog_name="maskc")
