"""``maskc shard``: shard a mask over the ranks of a context-parallel group and report the balance."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskc.cost import OBJECTIVES, Workload
from maskc.runtime.format import TILE_SIZES, load
from maskc.shard import DEFAULT_BLOCK, STRATEGIES
from maskc.shard import shard as shard_mask

MASK_SUFFIXES = (".npy", ".npz", ".json")


@click.command("shard")
@click.argument("source", metavar="MASK_OR_PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-P", "--ranks", type=click.IntRange(min=1), required=True, help="How many ranks share the sequence.")
@click.option("--block", type=click.Choice([str(t) for t in TILE_SIZES]), default=str(DEFAULT_BLOCK), show_default=True,
              help="Tile side: the unit of ownership and the ranks' plans' tile size.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="How tiles go to ranks: auto (the cost model's best of contiguous and lpt), or one by name.")
@click.option("--profile", "profile_name",
              help="Cost-model profile: a GPU name, a JSON path, or none.  [default: $MASKC_PROFILE, else the shipped H100 profile]")
@click.option("--workload", help="The call the predictions and bytes are for, e.g. batch=1,heads=16,kv_heads=4,head_dim=128,dtype=bf16.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="fwd_bwd", show_default=True,
              help="Balance training steps (fwd_bwd) or the forward alone.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Compile every rank's plan and write them with the manifest into this directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def shard(source: Path, ranks: int, block: str, strategy: str, profile_name: str | None, workload: str | None, objective: str,
          output: Path | None, as_json: bool) -> None:
    """Shard MASK_OR_PLAN (a .npy, .npz or .json mask, or a plan file) over -P ranks.

    Prints every rank's tokens, predicted work and bytes received, max/mean, and the same for the
    head-tail and PTRR assignments on the same cost model.
    """
    mask = source if source.suffix.lower() in MASK_SUFFIXES else load(source)
    sharding = shard_mask(mask, ranks, block=int(block), strategy=strategy, profile=profile_name,
                          workload=Workload.parse(workload) if workload else None, objective=objective, plans=output is not None)
    if output is not None:
        sharding.save(output)
    report = sharding.map.report
    if as_json:
        click.echo(json.dumps({**report, "output": str(output) if output is not None else None}, indent=2, sort_keys=True))
        return
    click.echo(_human(source, report))
    if output is not None:
        click.echo(f"wrote {output}: manifest.json and rank0.plan .. rank{ranks - 1}.plan")


def _human(source: Path, r: dict) -> str:
    from maskc.cli.files import human_bytes as _bytes

    unit = r["unit"]
    basis = (f"profile {r['profile']}, {r['kernel']}, B={r['workload']['batch']} H={r['workload']['heads']} D={r['workload']['head_dim']} "
             f"{r['workload']['dtype']}, objective {r['objective']}") if unit == "ms" else r["note"]
    lines = [f"sharded {source} over {r['ranks']} ranks in {r['tile']}-token tiles: {r['strategy']} ({basis})",
             f"{'rank':>5} {'tokens':>9} {'keys':>9} {'visible pairs':>15} {'work (' + unit + ')':>14} {'received':>11} {'sent':>11}"]
    for e in r["per_rank"]:
        lines.append(f"{e['rank']:>5} {e['tokens']:>9,} {e['key_tokens']:>9,} {e['pairs']:>15,} {e['work']:>14,.6g} "
                     f"{_bytes(e['recv_bytes']):>11} {_bytes(e['send_bytes']):>11}")
    lines.append(f"{'':>5} {'strategy':<12} {'max work':>12} {'max/mean':>9} {'max received':>13} {'total moved':>12}")
    for name, s in r["compared"].items():
        mark = "*" if name == r["strategy"] else " "
        lines.append(f"{mark:>5} {name:<12} {s['max_work']:>12,.6g} {s['max_over_mean']:>9.4f} "
                     f"{_bytes(s['max_recv_bytes']):>13} {_bytes(s['total_bytes']):>12}")
    lines.append("bytes: keys and values received in the forward; the backward sends as many bytes of their gradients back")
    return "\n".join(lines)
