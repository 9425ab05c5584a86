"""``maskc inspect``: what a plan holds, as text or as JSON (a stable contract for scripts).

A plan file comes from outside and its optional metadata — the predictions record, the reordering
record — is plain data that may hold anything of the right kinds: it is shown as far as it reads
(:func:`maskc.predictions.shown`, :func:`maskc.reorder.shown_record`), never trusted to be whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from maskc.cli.errors import UserError
from maskc.cli.files import human_bytes
from maskc.runtime.format import DENSE_VARIANTS, FamilyPlan, Plan, load


@click.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (a stable contract for scripts).")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Draw the tile map to this PNG file.")
@click.option("--profile", "profile_name",
              help="Re-evaluate the recorded candidates with this profile (a GPU name or JSON path; none: do not re-evaluate).")
@click.option("--workload", help="Re-evaluate them for this call, e.g. batch=4,heads=32,head_dim=64,dtype=fp16.")
def inspect(plan_path: Path, as_json: bool, png: Path | None, profile_name: str | None, workload: str | None) -> None:
    """Summarise a plan: shape, density, tile counts, size, variant, reordering, predictions."""
    plan = load(plan_path)
    if isinstance(plan, FamilyPlan):
        return _inspect_family(plan, plan_path, as_json, png is not None or bool(profile_name or workload))
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


def _inspect_family(family: FamilyPlan, path: Path, as_json: bool, asked_for_more: bool) -> None:
    """A family plan's summary: it holds no mask, so no tile map and no candidates to re-evaluate."""
    if asked_for_more:
        raise UserError(f"{path} is a family plan: it holds no mask to draw or predict again (bind it to a step's data at run time)")
    info = {"family": family.kind, "params": dict(family.params), "max_len": family.max_len, "block_m": family.block_m,
            "block_n": family.block_n, "traits": dict(family.traits), "plan_bytes": path.stat().st_size,
            "options": family.options, "predictions": family.predictions}
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    params = ", ".join(f"{k}={v}" for k, v in sorted(family.params.items())) or "no parameters"
    lines = [f"plan        {path} ({human_bytes(info['plan_bytes'])})",
             f"family      {family.kind} ({params}), up to {family.max_len} tokens, bound to each step's data at run time",
             f"tiles       {family.block_m}x{family.block_n}, interval kernel",
             f"traits      {', '.join(k for k, v in sorted(family.traits.items()) if v) or 'balanced lists, no shared keys'}"]
    lines += _prediction_lines(family.predictions, None, f"intervals/{family.block_m}x{family.block_n}")
    click.echo("\n".join(lines))


def _reevaluate(plan: Plan, profile_name: str | None, workload: str | None) -> dict[str, Any]:
    """Every recorded candidate's prediction under another profile and/or workload; with
    ``--profile none``, a note that nothing was re-evaluated."""
    from maskc.predictions import recorded_workload, reevaluate, reevaluation
    from maskc.profile import Workload, resolve_profile

    profile = resolve_profile(profile_name)
    if profile is None:
        if profile_name is None:
            raise UserError("no profile to predict with: pass --profile (a GPU name or JSON path) or set MASKC_PROFILE")
        return {"profile": None, "note": "--profile none: no profile, so the recorded predictions are not re-evaluated"}
    load_workload = Workload.parse(workload) if workload else recorded_workload(plan)
    return reevaluation(profile, load_workload, reevaluate(plan, profile, load_workload))


def summary(plan: Plan, plan_bytes: int) -> dict[str, Any]:
    """The facts ``maskc inspect --json`` promises scripts, derived from a validated plan."""
    from maskc.reorder import shown_record
    from maskc.work import plan_candidate

    counts = plan.tile_counts()
    total_pairs = plan.slices * plan.q_len * plan.kv_len
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
        "perm": {"length": plan.q_len, **shown_record(plan.options.get("reorder"))} if plan.reordered else None,
        "row_order": bool(plan.arrays["row_order"].size),
        "col_order": bool(plan.arrays["col_order"].size),
        "pieces": plan.arrays["pieces"].tolist(),
        "predictions": plan.predictions,
        "mask_sha256": plan.mask_sha256,
        "hash_of": plan.hash_of,
    }


def _human(path: Path, i: dict[str, Any]) -> str:
    lines = [
        f"plan        {path} ({human_bytes(i['plan_bytes'])})",
        f"mask        batch {i['batch']} x heads {i['heads']} x {i['q_len']} queries x {i['kv_len']} keys",
        f"visible     {i['visible_pairs']:,} pairs ({i['density']:.2%} of the mask)",
        f"tiles       {i['block_m']}x{i['block_n']}: {i['tiles_total']:,} total, {i['tiles_empty']:,} empty, "
        f"{i['tiles_full']:,} full, {i['tiles_partial']:,} partial ({i['partial_distinct']:,} distinct)",
        f"work left   {i['work_fraction']:.2%} of the dense tiles are visited",
        f"variant     {i['variant']}" + (" (run by SDPA)" if i["variant"] in DENSE_VARIANTS else ""),
    ]
    if i["pieces"]:
        shown = ", ".join(f"{'causal ' if c else ''}[{q0}:{q1}, {k0}:{k1}]" for q0, q1, k0, k1, c in i["pieces"])
        lines.append(f"backward    through {len(i['pieces'])} dense pieces (queries, keys): {shown}")
    perm = i["perm"]
    if perm is not None:
        detail = ""
        if all(k in perm for k in ("tiles_before", "tiles_after", "bandwidth_before", "bandwidth_after")):
            before, after = perm["tiles_before"], perm["tiles_after"]
            detail = (f": tiles {before['full'] + before['partial']:,} -> {after['full'] + after['partial']:,} "
                      f"({before['full']:,} -> {after['full']:,} full), bandwidth {perm['bandwidth_before']:,} -> {perm['bandwidth_after']:,}")
        lines.append(f"reordered   {perm.get('method', 'yes')}{detail}")
    if i["row_order"] or i["col_order"]:
        lines.append(f"schedule    heaviest first: {', '.join(n for n in ('row_order', 'col_order') if i[n])}")
    lines += _prediction_lines(i["predictions"], i.get("reevaluated"), i["candidate"])
    lines.append(f"mask hash   {i['mask_sha256']} (of its {i['hash_of']})")
    return "\n".join(lines)


def _prediction_lines(pred: Any, reevaluated: dict[str, Any] | None, own: str) -> list[str]:
    """The candidates the cost model compared, the plan's own marked: the stored predictions, or
    the re-evaluated ones when there are some."""
    from maskc.predictions import shown

    stored = shown(pred)
    again = shown(reevaluated) if reevaluated is not None and "candidates" in reevaluated else None
    view = again or stored
    lines = []
    if again is None and stored is not None and not stored.candidates:
        lines.append(f"predicted   none: {stored.note or 'no candidates recorded'}")
    elif view is not None:
        w = view.workload
        objective = f", objective {stored.objective}" if stored is not None else ""
        lines.append(f"predicted   profile {view.profile}, B={w.get('batch')} H={w.get('heads')} D={w.get('head_dim')} {w.get('dtype')}{objective}"
                     + (" (re-evaluated)" if again else ""))
        for name, times in sorted(view.candidates.items()):
            mark = "*" if name == own else " "
            shown_times = f"fwd {times[0]:9.3f} ms   fwd+bwd {times[1]:9.3f} ms" if isinstance(times, tuple) else times
            lines.append(f"          {mark} {name:<28} {shown_times}")
        if stored is not None and stored.note:
            lines.append(f"            note: {stored.note}")
    if reevaluated is not None and "note" in reevaluated:
        lines.append(f"            note: {reevaluated['note']}")
    return lines
