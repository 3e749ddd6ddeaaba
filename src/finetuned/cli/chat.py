"""finetuned chat: talk to a version, an adapter, or the line's newest checkpoint."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from finetuned.cli.common import RootOption, fail, workspace

HELP = """Talk to the model line: answers stream as they are generated, turn after turn.

TARGET is a job id (its adapter, or the newest checkpoint of a job still
training or stopped), a version (tiny-v2, v2), `base` (the current version)
or `latest` (the line's newest checkpoint). Without TARGET: the line's newest
checkpoint, else the current version. Prompts are rendered with the workspace's
chat template exactly as training renders them (--show-prompt prints them).

Answers are greedy unless --temperature is set: the same question gets the same
answer, as in previews and evaluation, so two checkpoints differ by their
weights and not by chance. Type /reset to forget the conversation, /exit (or
Ctrl+D) to end; Ctrl+C stops an answer. With stdin piped, each line is one
message and each answer one line on stdout (--json: one JSON object each).

examples:
  finetuned chat
  finetuned chat 20251116_014530 --system "Answer in one sentence."
  printf 'Say hi.\\nAnd again?\\n' | finetuned chat tiny-v2 --json
"""


def chat(
    target: Annotated[str | None, typer.Argument(help="A job id, a version, base or latest (default: the "
                                                     "newest checkpoint, else the current version).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt for the conversation "
                                                                "(default: the template's own, if any).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="The longest answer.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0,
                                               help="0: greedy (the default); above 0: sample.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Sampling: nucleus size.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="Sampling: only the K likeliest (0: all).")] = 0,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling: the same seed, the same answers.")] = None,
    device: Annotated[str, typer.Option("--device", help="Where the model runs: cpu (float32), cuda, cuda:1...")]
    = "cpu",
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print each prompt as the model reads it.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per answer.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    from finetuned.chat.conversation import Conversation
    from finetuned.chat.generate import Sampling
    from finetuned.chat.terminal import Options, Terminal
    from finetuned.cli.consolidate import quiet_libraries
    from finetuned.lifecycle.targets import describe, load, resolve

    quiet_libraries()
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
    notes = Console(soft_wrap=True, highlight=False) if interactive else Console(stderr=True, soft_wrap=True,
                                                                                  highlight=False)
    problem = _device_problem(device)
    if problem:
        fail(problem)
    config = ws.load_config()
    found = resolve(ws, target)
    with notes.status(f"loading {escape(found.label)}…") if interactive else nullcontext():
        model, tokenizer = load(found, config, device)
    sampling = Sampling(temperature, top_p, top_k, seed)
    context = getattr(model.config, "max_position_embeddings", None)
    options = Options(max_new_tokens, sampling, show_prompt, as_json,
                      room=context - max_new_tokens if context and context > max_new_tokens else None)
    how = "greedy" if sampling.greedy else f"sampling at temperature {temperature:g}"
    source = describe(found)
    notes.print(f"[bold]chat with {escape(source)}[/] · {device} · {how}" +
                (" · /reset forgets, /exit ends" if interactive else ""), markup=True)
    terminal = Terminal(model, tokenizer, Conversation(tokenizer, system), options, source, sys.stdout, notes,
                        interactive)
    try:
        terminal.run(terminal.prompts(sys.stdin))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None



def _device_problem(device: str) -> str | None:
    """Why `device` cannot run the model here, in one line; None when it can."""
    import torch

    try:
        chosen = torch.device(device)
    except RuntimeError:
        return f"--device {device}: not a device torch knows (cpu, cuda, cuda:1, mps...)"
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (chosen.index or 0):
            return f"--device {device}: this machine has {count} CUDA device{'s' if count != 1 else ''}"
    return None
