"""``maskc bench``: time maskc against FlexAttention, SDPA with a mask and dense causal attention.

The benchmark itself (mask set, timing, the float64 error check) is :mod:`maskc.measure.bench`,
imported when the command runs, so ``import maskc.cli.main`` pays for neither it nor torch.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from maskc.cli.errors import UserError
from maskc.cost import ProfileError
from maskc.errors import MaskError
from maskc.runtime.format import DTYPES


class _MasksOption(click.Option):
    """``--masks``, whose help lists the benchmark's masks, read from the mask set only when help is shown."""

    def get_help_record(self, ctx: click.Context):
        from maskc.measure.masks import DEFAULT_MASKS, EXTRA_MASKS

        self.help = f"Comma-separated benchmark masks.  [default: {', '.join(DEFAULT_MASKS)}; also available: {', '.join(EXTRA_MASKS)}]"
        return super().get_help_record(ctx)


@click.command("bench")
@click.option("--masks", cls=_MasksOption, help="Comma-separated benchmark masks.")
@click.option("-n", "ns", type=int, multiple=True, help="Sequence length N; repeat for several.  [default: 8192 and 32768]")
@click.option("--heads", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--kv-heads", type=click.IntRange(min=1), help="Key/value heads, dividing --heads (GQA/MQA).  [default: --heads]")
@click.option("--head-dim", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bf16", show_default=True)
@click.option("--block", default="auto", show_default=True, help="maskc tile size BLOCK_MxBLOCK_N, or auto: the plan the cost model chooses.")
@click.option("--profile", help="Cost-model profile (a GPU name or JSON path; none for no model).  [default: $MASKC_PROFILE, else the shipped H100 profile]")
@click.option("--candidates", is_flag=True, help="Also time every other candidate the cost model compared (maskc:<candidate> rows).")
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N, or cpu (tiny sizes: the reference backend, no FlexAttention).")
@click.option("--backend", type=click.Choice(["auto", "triton", "reference"]), default="auto", show_default=True,
              help="maskc backend: auto = Triton on CUDA (or under TRITON_INTERPRET=1), reference elsewhere.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write every result and the environment here (rewritten after each row).")
@click.option("--flex/--no-flex", default=True, show_default=True, help="Time FlexAttention (CUDA only).")
@click.option("--sdpa/--no-sdpa", default=True, show_default=True, help="Time SDPA with the dense boolean mask.")
@click.option("--dense-causal/--no-dense-causal", default=True, show_default=True, help="The dense causal SDPA reference row per N.")
@click.option("--backward/--no-backward", default=True, show_default=True, help="Also time forward+backward.")
@click.option("--rows-for-error", type=click.IntRange(min=1), default=256, show_default=True, help="Query rows checked against the float64 reference.")
@click.option("--warmup", "warmup_ms", type=click.FloatRange(min=0), default=50.0, show_default=True, help="Warm-up time per measurement, ms (do_bench warmup).")
@click.option("--rep", "rep_ms", type=click.FloatRange(min=1), default=200.0, show_default=True, help="Timed repetitions per measurement, ms (do_bench rep).")
@click.option("--sdpa-max-mask-gib", type=click.FloatRange(min=0), default=8.0, show_default=True, help="Skip methods that need the dense mask above this size.")
@click.option("--flex-block", type=int, default=128, show_default=True, help="FlexAttention BLOCK_SIZE for create_block_mask.")
@click.option("--flex-tree", type=click.Choice(["dense", "interval"]), default="dense", show_default=True,
              help="FlexAttention mask_mod for token_tree/medusa: dense-mask lookup, or the closed-form preorder-interval test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of q/k/v and of the random masks.")
@click.option("--window", type=click.IntRange(min=1), help="sliding_window's window.  [default: 1024]")
@click.option("--prefix", type=click.IntRange(min=0), help="prefix_lm's prefix length.  [default: N/4]")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def bench(ns, quiet, json_path, **options) -> None:
    """Benchmark maskc against FlexAttention, SDPA with a boolean mask and dense causal attention.

    One process, one device. Prints a table (one row per mask x N x method) on stdout and
    progress on stderr; --json keeps everything, with the GPU, versions, date and command line.
    """
    from maskc.compiler import parse_block_option
    from maskc.cost import resolve_profile
    from maskc.measure.masks import parse_masks

    try:
        options["masks"] = parse_masks(options["masks"])
        parse_block_option(options["block"])
        resolve_profile(options["profile"])
    except (MaskError, ProfileError) as e:
        raise UserError(str(e)) from None
    if options["kv_heads"] is not None and options["heads"] % options["kv_heads"]:
        raise UserError(f"--kv-heads {options['kv_heads']} must divide --heads {options['heads']}")
    if any(n < 1 for n in ns):
        raise UserError(f"-n must be positive, got {min(ns)}")
    if json_path is not None and not json_path.parent.is_dir():
        raise UserError(f"--json: directory does not exist: {json_path.parent}")

    from maskc.measure.bench import BenchConfig, BenchError, run_bench  # imports torch
    from maskc.measure.report import format_table

    def progress(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    cfg = BenchConfig(ns=list(ns) or [8192, 32768], **options)
    try:
        result = run_bench(cfg, progress=progress, command=_command_line(sys.argv), json_path=json_path)
    except (BenchError, MaskError, ProfileError) as e:
        raise UserError(str(e)) from None
    click.echo(format_table(result))
    if json_path is not None:
        click.echo(f"wrote {json_path}", err=True)


def _command_line(argv: list[str]) -> str:
    """The command line as typed: ``maskc bench ...`` or ``python -m maskc.cli.bench_cmd ...``."""
    if len(argv) > 1 and argv[1] == "bench":
        return shlex.join(["maskc", "bench", *argv[2:]])
    if argv and Path(argv[0]).name == "bench_cmd.py":
        return shlex.join(["python", "-m", "maskc.cli.bench_cmd", *argv[1:]])
    return shlex.join(argv)


if __name__ == "__main__":
    bench(prog_name="maskc bench")
