"""The ``maskc`` command: thin wrappers over the compiler and the runtime.

User errors (a missing file, a malformed mask, a corrupted plan, a bad option) print one
``Error: ...`` line and exit with status 2; nothing here prints a traceback for them.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

import click
import numpy as np

from maskc import __version__
from maskc.cli.bench_cmd import bench
from maskc.cli.calibrate_cmd import calibrate
from maskc.cli.errors import UserError
from maskc.cli.mask_cmd import mask
from maskc.errors import MaskError
from maskc.profile import ProfileError
from maskc.runtime.format import Plan, PlanError, atomic_write, encode, load


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
    {"kind": "documents", "lengths": [4096, 1000], "causal": true} (see the README).
    """
    from maskc.cache import CacheWarning, Compiled, PlanCache
    from maskc.compiler import compile_with
    from maskc.options import CompileOptions
    from maskc.profile import Workload
    from maskc.sources import open_mask

    options = CompileOptions.of(block=block, variant=variant, reorder=reorder, schedule=schedule, backward=backward, profile=profile_name,
                                workload=Workload.parse(workload) if workload else None)
    if flashmask is not None:
        from maskc.flashmask import load_startend_row_indices

        source = load_startend_row_indices(mask, causal=flashmask == "causal")
    else:
        source = open_mask(mask)
    if output.parent and not output.parent.is_dir():
        raise UserError(f"output directory does not exist: {output.parent}")
    with _progress(not quiet, "compiling") as progress, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        if cache:
            compiled = PlanCache().compile_with(source, options, progress)
        else:
            plan = compile_with(source, options, progress)
            compiled = Compiled(plan, encode(plan), False)
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
    _write(output, compiled.data)
    if not quiet:
        plan, hit = compiled.plan, compiled.hit
        c = plan.tile_counts()
        chosen = _chosen(plan)
        click.echo(
            f"wrote {output}: {plan.q_len}x{plan.kv_len} mask, {plan.block_m}x{plan.block_n} tiles, {c['tiles_full']} full + {c['tiles_partial']} partial "
            f"of {c['tiles_total']} ({_pct(c['tiles_full'] + c['tiles_partial'], c['tiles_total'])} of dense work), "
            f"{plan.variant}{', reordered' if plan.reordered else ''}{', backward through dense pieces' if plan.arrays['pieces'].size else ''}, "
            f"{_bytes(len(compiled.data))}{' (from cache)' if hit else ''}"
            + (f"; predicted {chosen}" if chosen else "")
        )


def _write(path: Path, data: bytes) -> None:
    """Write a file atomically; an error that names no file (a full disk) names this one."""
    try:
        atomic_write(path, data)
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def _chosen(plan: Plan) -> str | None:
    """The winner's predicted times, as the plan recorded them."""
    pred = plan.predictions or {}
    entry = (pred.get("candidates") or {}).get(pred.get("chosen"))
    if not isinstance(entry, dict) or not isinstance(entry.get("fwd_ms"), (int, float)):
        return None
    return f"fwd {entry['fwd_ms']:.3f} ms, fwd+bwd {entry['fwd_bwd_ms']:.3f} ms ({pred.get('profile')})"


@cli.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (a stable contract for scripts).")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Draw the tile map to this PNG file.")
@click.option("--profile", "profile_name", help="Re-evaluate the recorded candidates with this profile (a GPU name or JSON path).")
@click.option("--workload", help="Re-evaluate them for this call, e.g. batch=4,heads=32,head_dim=64,dtype=fp16.")
def inspect(plan_path: Path, as_json: bool, png: Path | None, profile_name: str | None, workload: str | None) -> None:
    """Summarise a plan: shape, density, tile counts, size, variant, reordering, predictions."""
    plan = load(plan_path)
    info = summary(plan, plan_path.stat().st_size)
    if profile_name or workload:
        info["reevaluated"] = _reevaluate(plan, profile_name, workload)
    if png is not None:
        from maskc.cli.tilemap import draw_tile_map

        draw_tile_map(plan, png)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    click.echo(_human(plan_path, info))
    if png is not None:
        click.echo(f"tile map    {png}")


def _reevaluate(plan: Plan, profile_name: str | None, workload: str | None) -> dict:
    """Every recorded candidate's prediction under another profile and/or workload."""
    from maskc import cost

    pred = plan.predictions or {}
    if profile_name:
        profile = cost.load_profile(profile_name)
    else:
        profile = cost.default_profile()
        if profile is None:
            raise UserError("no profile to predict with: pass --profile (a GPU name or JSON path) or set MASKC_PROFILE")
    load_workload = cost.Workload.parse(workload) if workload else cost.Workload(**{
        k: v for k, v in (pred.get("workload") or {}).items() if k in cost.Workload.__dataclass_fields__})
    results = cost.reevaluate(plan, profile, load_workload)
    return {
        "profile": profile.name,
        "workload": load_workload.as_dict(),
        "candidates": {name: ({"fwd_ms": r.fwd_ms, "fwd_bwd_ms": r.fwd_bwd_ms} if isinstance(r, cost.Prediction) else {"note": r})
                       for name, r in results.items()},
    }


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
    if output.parent and not output.parent.is_dir():
        raise UserError(f"output directory does not exist: {output.parent}")
    from maskc.flashmask import to_startend_row_indices

    array, causal = to_startend_row_indices(load(plan_path))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    _write(output, buffer.getvalue())
    click.echo(f"wrote {output}: FlashMask startend_row_indices {list(array.shape)} int32; call flashmask_attention(..., causal={causal})")


@cli.group(cls=_Group)
def cache() -> None:
    """The plan cache ($MASKC_CACHE_DIR, default ~/.cache/maskc/plans)."""


@cache.command("ls")
def cache_ls() -> None:
    """List cached plans: key, size, mask shape."""
    from maskc.cache import PlanCache

    c = PlanCache()
    for e in c.entries():
        try:
            p = load(e.path)
            what = f"{p.batch}x{p.heads}x{p.q_len}x{p.kv_len} block {p.block_m}x{p.block_n} {p.variant}"
        except PlanError:
            what = "unreadable (dropped on next use)"
        click.echo(f"{e.key[:16]}  {_bytes(e.bytes):>9}  {what}")


@cache.command("stats")
def cache_stats() -> None:
    """Number of cached plans, their total size and the cache directory."""
    from maskc.cache import PlanCache

    c = PlanCache()
    entries = c.entries()
    click.echo(f"{len(entries)} plans, {_bytes(sum(e.bytes for e in entries))} in {c.directory}")


@cache.command("clear")
def cache_clear() -> None:
    """Remove every cached plan."""
    from maskc.cache import PlanCache

    c = PlanCache()
    click.echo(f"removed {c.clear()} plans from {c.directory}")


def summary(plan: Plan, plan_bytes: int) -> dict:
    """The facts ``maskc inspect --json`` promises scripts, derived from a validated plan."""
    from maskc.cost import plan_candidate

    counts = plan.tile_counts()
    total_pairs = plan.slices * plan.q_len * plan.kv_len
    reorder = plan.options.get("reorder") if isinstance(plan.options.get("reorder"), dict) else {}
    return {
        "q_len": plan.q_len,
        "kv_len": plan.kv_len,
        "batch": plan.batch,
        "heads": plan.heads,
        "block_m": plan.block_m,
        "block_n": plan.block_n,
        "visible_pairs": plan.visible_pairs,
        "density": plan.visible_pairs / total_pairs,
        **counts,
        "work_fraction": (counts["tiles_full"] + counts["tiles_partial"]) / counts["tiles_total"],
        "plan_bytes": plan_bytes,
        "variant": plan.variant,
        "candidate": plan_candidate(plan).name,
        "reordered": plan.reordered,
        "perm": {"length": plan.q_len, **reorder} if plan.reordered else None,
        "row_order": bool(plan.arrays["row_order"].size),
        "col_order": bool(plan.arrays["col_order"].size),
        "pieces": plan.arrays["pieces"].tolist(),
        "predictions": plan.predictions,
        "mask_sha256": plan.mask_sha256,
        "hash_of": plan.hash_of,
    }


def _human(path: Path, i: dict) -> str:
    lines = [
        f"plan        {path} ({_bytes(i['plan_bytes'])})",
        f"mask        batch {i['batch']} x heads {i['heads']} x {i['q_len']} queries x {i['kv_len']} keys",
        f"visible     {i['visible_pairs']:,} pairs ({i['density']:.2%} of the mask)",
        f"tiles       {i['block_m']}x{i['block_n']}: {i['tiles_total']:,} total, {i['tiles_empty']:,} empty, "
        f"{i['tiles_full']:,} full, {i['tiles_partial']:,} partial ({i['partial_distinct']:,} distinct)",
        f"work left   {i['work_fraction']:.2%} of the dense tiles are visited",
        f"variant     {i['variant']}" + (" (run by SDPA)" if i["variant"] in ("dense", "dense_causal") else ""),
    ]
    if i["pieces"]:
        shown = ", ".join(f"{'causal ' if c else ''}[{q0}:{q1}, {k0}:{k1}]" for q0, q1, k0, k1, c in i["pieces"])
        lines.append(f"backward    through {len(i['pieces'])} dense pieces (queries, keys): {shown}")
    perm = i["perm"]
    if perm is not None:
        detail = ""
        if "tiles_before" in perm:
            before, after = perm["tiles_before"], perm["tiles_after"]
            detail = (f": tiles {before['full'] + before['partial']:,} -> {after['full'] + after['partial']:,} "
                      f"({before['full']:,} -> {after['full']:,} full), bandwidth {perm['bandwidth_before']:,} -> {perm['bandwidth_after']:,}")
        lines.append(f"reordered   {perm.get('method', 'yes')}{detail}")
    if i["row_order"] or i["col_order"]:
        lines.append(f"schedule    heaviest first: {', '.join(n for n in ('row_order', 'col_order') if i[n])}")
    lines += _prediction_lines(i["predictions"], i.get("reevaluated"), i["candidate"])
    lines.append(f"mask hash   {i['mask_sha256']} (of its {i['hash_of']})")
    return "\n".join(lines)


def _prediction_lines(pred: dict | None, reevaluated: dict | None, own: str) -> list[str]:
    """The candidates the cost model compared, the plan's own marked; the stored predictions, or
    the re-evaluated ones when asked for."""
    if reevaluated is None and isinstance(pred, dict) and not pred.get("candidates"):
        return [f"predicted   none: {pred.get('note', 'no candidates recorded')}"]
    source = reevaluated or pred
    if not isinstance(source, dict):
        return []
    workload = source.get("workload") or {}
    objective = f", objective {pred.get('objective')}" if isinstance(pred, dict) else ""
    lines = [f"predicted   profile {source.get('profile')}, B={workload.get('batch')} H={workload.get('heads')} "
             f"D={workload.get('head_dim')} {workload.get('dtype')}{objective}" + (" (re-evaluated)" if reevaluated else "")]
    for name, entry in sorted(source["candidates"].items()):
        mark = "*" if name == own else " "
        if isinstance(entry, dict) and isinstance(entry.get("fwd_ms"), (int, float)):
            lines.append(f"          {mark} {name:<28} fwd {entry['fwd_ms']:9.3f} ms   fwd+bwd {entry['fwd_bwd_ms']:9.3f} ms")
        else:
            lines.append(f"          {mark} {name:<28} {entry.get('note', 'not predicted') if isinstance(entry, dict) else 'not predicted'}")
    if isinstance(pred, dict) and pred.get("note"):
        lines.append(f"            note: {pred['note']}")
    return lines


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


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


cli.add_command(mask)
cli.add_command(bench)
cli.add_command(calibrate)


def main() -> None:
    cli(prog_name="maskc")
