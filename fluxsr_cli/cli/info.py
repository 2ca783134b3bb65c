"""`fluxsr info`: versions, devices, cached models, and (with --model) what a checkpoint holds."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fluxsr_cli.cli.common import handle_errors, note, out


@handle_errors
def info(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also describe this checkpoint (repo id or folder).")] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision of --model.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Use only the local Hugging Face cache.")] = False,
) -> None:
    """Show versions, devices and the FLUX/fluxsr models in the local Hugging Face cache.

    Examples:
      fluxsr info
      fluxsr info --model mon3tr/FluxSR-private --offline
    """
    from fluxsr_cli.environment import cached_models, devices, versions

    table = Table(title="fluxsr environment", show_header=False)
    for name, version in versions().items():
        table.add_row(name, version)
    out.print(table)

    dev = Table(title="devices")
    for col in ("device", "name", "memory"):
        dev.add_column(col)
    for d in devices():
        memory = f"{d['free_gb']:.1f} / {d['memory_gb']:.1f} GiB free" if "memory_gb" in d else f"{d['threads']} threads"
        dev.add_row(d["device"], d["name"], memory)
    out.print(dev)

    models = cached_models()
    cache = Table(title="models in the Hugging Face cache")
    for col in ("repo", "kind", "size", "revisions"):
        cache.add_column(col)
    for m in models:
        cache.add_row(m.repo_id, m.kind, f"{m.size_gb:.2f} GB", ", ".join(m.revisions))
    if models:
        out.print(cache)
    else:
        out.print("no FLUX or fluxsr models in the Hugging Face cache yet")

    from fluxsr_cli.model.quantize import cache_root, list_cache

    entries = list_cache()
    if entries:
        quantized = Table(title=f"quantized transformers in {cache_root()}")
        for col in ("mode", "size", "made from", "LoRA", "library", "created"):
            quantized.add_column(col, overflow="fold")
        for e in entries:
            quantized.add_row(e.mode, f"{e.bytes / 1e9:.2f} GB", e.source, e.lora or "-", e.library,
                              e.created)
        out.print(quantized)

    if model:
        from fluxsr_cli.model.checkpoint import read_checkpoint

        ckpt = read_checkpoint(model, revision=revision, offline=offline, notice=note)
        desc = Table(title=f"checkpoint {model}", show_header=False)
        i = ckpt.info
        for key, value in (("folder", str(ckpt.root)), ("format", i.source), ("base model", i.base_model),
                           ("t_l", f"{i.t_l:g}"), ("guidance", f"{i.guidance:g}"),
                           ("LoRA rank", str(i.lora_rank or "-")),
                           ("weights", "LoRA" if ckpt.lora_file else "full transformer"),
                           ("prompt embeds", str(tuple(ckpt.prompt_embeds.shape))),
                           ("pooled embeds", str(tuple(ckpt.pooled_prompt_embeds.shape)))):
            desc.add_row(key, value)
        out.print(desc)
