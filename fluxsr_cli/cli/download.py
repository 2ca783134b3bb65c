"""`fluxsr download`: fetch what `fluxsr upscale` (or, with --teacher, `fluxsr pairs`) will need, ahead."""

from __future__ import annotations

from typing import Annotated

import typer

from fluxsr_cli.cli.common import handle_errors, note, out, rich_progress
from fluxsr_cli.cli.model_options import Base, Model, Offline, Revision, Vae
from fluxsr_cli.model.checkpoint import DEFAULT_MODEL


@handle_errors
def download(
    model: Model = DEFAULT_MODEL,
    revision: Revision = None,
    base: Base = None,
    base_revision: Annotated[str | None, typer.Option("--base-revision", help="Hub revision of the base.")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="Instead: what `fluxsr pairs` reads of the base "
                                          "(--base, default FLUX.1-dev), text encoders included.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and check it; download nothing.")]
    = False,
    offline: Offline = False,
    vae: Vae = None,
) -> None:
    """List the files `fluxsr upscale` will read (sizes, what the cache holds, the free disk), check disk
    space and gated access, then download them (resumable: rerun to continue).

    Examples:
      fluxsr download --dry-run
      fluxsr download --model mon3tr/FluxSR-private
      fluxsr download --model my-org/my-fluxsr --base ./FLUX.1-dev
      fluxsr download --teacher --dry-run
      fluxsr download --base ~/models/flux1-dev-Q8_0.gguf --dry-run
    """
    from fluxsr_cli.model import download as dl

    if teacher:
        from fluxsr_cli.model.hub import DEFAULT_BASE
        from fluxsr_cli.train.pairs import TEACHER_FILES

        plan = dl.plan_files("teacher", base or DEFAULT_BASE, base_revision, TEACHER_FILES, offline=offline)
    else:
        plan = dl.plan_upscale(model, revision, base, base_revision, offline=offline, vae=vae)
    _show(plan)
    if dry_run:
        dl.check_plan(plan)
        out.print("dry run: nothing downloaded")
        return
    with rich_progress() as progress:
        fetched = dl.download(plan, progress=progress, notice=note)
    out.print(f"downloaded {fetched} files ({dl.format_bytes(plan.download_bytes)})" if fetched
              else "nothing to download: the cache holds every file")


def _show(plan) -> None:
    from rich.table import Table

    from fluxsr_cli.model.download import format_bytes

    table = Table(title="files")
    for col in ("role", "repo", "file", "size", "state"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for repo in plan.repos:
        if repo.local:
            table.add_row(repo.role, repo.ref, "(local, nothing to fetch)", "", "local")
            continue
        name = repo.ref + (f"@{repo.revision}" if repo.revision else "")
        for f in repo.files:
            state = "cached" if f.cached else ("missing" if f.size is None else "to download")
            table.add_row(repo.role, name, f.path, format_bytes(f.size), state)
    out.print(table)
    out.print(f"total {format_bytes(plan.total_bytes)}, in the cache {format_bytes(plan.cached_bytes)}, "
              f"to download {format_bytes(plan.download_bytes)}; free on {plan.cache_dir}: "
              f"{format_bytes(plan.free_bytes)}", soft_wrap=True, markup=False)
