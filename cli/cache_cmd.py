"""``maskc cache``: list, count and clear the plan cache."""

from __future__ import annotations

import click

from maskc.cli.files import human_bytes


@click.group()
def cache() -> None:
    """The plan cache ($MASKC_CACHE_DIR, default ~/.cache/maskc/plans)."""


@cache.command("ls")
def cache_ls() -> None:
    """List cached plans: key, size, mask shape (or why an entry cannot be used)."""
    from maskc.cache import BadEntry, PlanCache

    c = PlanCache()
    for e in c.entries():
        try:
            p = c.read(e.key)[0]
            what = f"{p.batch}x{p.heads}x{p.q_len}x{p.kv_len} block {p.block_m}x{p.block_n} {p.variant}"
        except BadEntry as why:
            what = f"bad entry, dropped on next use: {why}"
        except FileNotFoundError:  # removed meanwhile
            continue
        click.echo(f"{e.key[:16]}  {human_bytes(e.bytes):>9}  {what}")


@cache.command("stats")
def cache_stats() -> None:
    """Number of cached plans, their total size and the cache directory."""
    from maskc.cache import PlanCache

    c = PlanCache()
    entries = c.entries()
    click.echo(f"{len(entries)} plans, {human_bytes(sum(e.bytes for e in entries))} in {c.directory}")


@cache.command("clear")
def cache_clear() -> None:
    """Remove every cached plan."""
    from maskc.cache import PlanCache

    c = PlanCache()
    click.echo(f"removed {c.clear()} plans from {c.directory}")
