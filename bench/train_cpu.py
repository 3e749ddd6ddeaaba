"""Training throughput on this machine: finetuned's trainer beside the plain Hugging Face + PEFT loop.

    python bench/train_cpu.py [--shapes tiny smollm2-135m] [--steps 12] [--bs 4] [--seq 256] [--levers [NAME ...]]
                              [--dpo]

For each shape (random weights of the reference script's shapes, SmolLM2's tokenizer) three
systems run one after another, each in its own process (so peak RSS is its own):

  finetuned     the real recipe (packing, selective chunked loss) on real chat data of mixed
                lengths (the Alpaca demo set, rendered with the chat template)
  hf-padded     the reference loop (`model(**batch, labels=...)`, AdamW, clip) on the same
                examples, padded to each batch's longest, as a Hugging Face collator does
  reference     ../shared/bench/hf_peft_baseline.py --mixed-min 32 (random tokens, lengths
                uniform in [32, seq]): the shared reference script, run beside ours

With --levers, finetuned also runs with one lever changed at a time, to show what each pays
(all of them, or the ones named):

  no-packing     data.packing off: batches padded to their longest example
  no-selective   the loss over the full float32 logits (the model's own output layer)
  act-ckpt       training.activation_checkpointing on
  no-per-example packed rows attend through their block mask in one SDPA call, not per example
  fp32           training.precision fp32 (the finetuned row runs `auto`: bf16 where the CPU computes it natively)

With --dpo, three preference rows follow (bench/dpo_systems.py): our DPO job, TRL's DPOTrainer as a
user runs it, and TRL with precomputed reference log-probabilities, on pairs built from the same data.

Throughput counts real (non-padding) tokens only; the precision column is what each of our rows trained in
(job.json). Prints a table with the ratio to
hf-padded (DPO rows: to trl-dpo) and writes bench/results/train_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dpo_systems

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results" / "train_cpu.json"
ALPACA = SHARED / "datasets" / "alpaca_en_demo.json"
LORA_RANK = 16


def make_model(shape: str, folder: Path) -> Path:
    """A random model of the reference script's shape, saved with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    sys.path.insert(0, str(SHARED / "bench"))
    from hf_peft_baseline import SHAPES  # the same shapes the reference measures

    from finetuned.models.builtin import _tokenizer_files

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen3Config(max_position_embeddings=4096, **SHAPES[shape])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(_tokenizer_files())).save_pretrained(folder)
    return folder


def prepared(folder: Path, work: Path, seq: int, packing: bool, bs: int, steps: int) -> Any:
    from finetuned.config import DataSettings
    from finetuned.data import JobData, prepare
    from finetuned.models.loading import load_tokenizer

    tokenizer = load_tokenizer(folder)
    settings = DataSettings(packing=packing, holdout_fraction=0.0, overlong="truncate")
    out = work / f"tok-{packing}"
    if not (out / "meta.json").exists():
        prepare(ALPACA, out, tokenizer, settings, seq)
    return JobData.open(out, batch_size=bs, grad_accum=1, epochs=1, max_steps=steps, max_seq_len=seq,
                        packing=packing, holdout_fraction=0.0, max_holdout=0, seed=0, pad_id=tokenizer.pad_token_id)


LEVERS = ("no-packing", "no-selective", "act-ckpt", "no-per-example", "fp32")


def run_finetuned(folder: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The real recipe, in-process, timed from its own step reports; a lever named in --system changed."""
    from finetuned.config import Config, save_config
    from finetuned.models import attention
    from finetuned.processes.protocol import Step, Train
    from finetuned.queue.job import Job, JobStatus
    from finetuned.worker import loss
    from finetuned.worker.cache import ModelCache
    from finetuned.worker.recipe import run_job
    from finetuned.worker.world import Solo
    from finetuned.workspace import ADAPTER_RECORD, Workspace

    lever = a.system.removeprefix("finetuned").removeprefix("/")

    ws = Workspace.at(work / f"ws-{lever or 'all'}")  # its own: a second run in one would resume the first
    ws.create()
    config = Config(base_model=str(folder))
    config.lora.dropout = 0.0
    config.training.batch_size, config.training.max_seq_len = a.bs, a.seq
    config.training.max_steps = a.warmup + a.steps
    config.training.checkpoint_every_steps = 10_000
    config.data.holdout_fraction, config.data.overlong = 0.0, "truncate"
    config.previews.every_steps = 0
    config.data.packing = lever != "no-packing"
    config.training.activation_checkpointing = lever == "act-ckpt"
    config.training.precision = "fp32" if lever == "fp32" else "auto"
    if lever == "no-per-example":  # load_model then leaves the model on plain sdpa
        attention.use_packed_attention = lambda model: False
    if lever == "no-selective":
        loss.supports_selective_logits = lambda model: False
    save_config(ws.config_path, config)
    steps: list[Step] = []
    world = Solo(lambda m: steps.append(m) if isinstance(m, Step) else None, lambda _step: None)
    job = Job(id="bench", file=ALPACA.name, order=1.0, path=str(ALPACA), status=JobStatus.TRAINING)
    run_job(ws, Train(job=job, file=ALPACA, config=config), ModelCache(ws), world)
    timed = steps[a.warmup:]
    tokens = timed[-1].tokens - steps[a.warmup - 1].tokens if a.warmup else timed[-1].tokens
    seconds = sum(m.step_seconds for m in timed)
    precision = json.loads((ws.adapter_dir(job.id) / ADAPTER_RECORD).read_text())["precision"]
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / len(timed),
            "tokens_per_step": tokens / len(timed), "loss": timed[-1].loss, "precision": precision}


def run_hf_padded(folder: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The reference script's loop, on the same examples, padded as a Hugging Face collator pads."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = prepared(folder, work, a.seq, packing=False, bs=a.bs, steps=a.warmup + a.steps)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    tokens, started = 0, 0.0
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            started = time.perf_counter()
        (batch,) = data.step_batches(step)
        if step >= a.warmup:
            tokens += batch.n_tokens
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / a.steps, "tokens_per_step": tokens / a.steps,
            "loss": loss.item()}


def child(a: argparse.Namespace) -> None:
    work = Path(a.work)
    folder = work / "model"
    if a.system == "finetuned-dpo":
        result = dpo_systems.run_finetuned_dpo(folder, work, a, ALPACA)
    elif a.system.startswith("trl-dpo"):
        result = dpo_systems.run_trl_dpo(folder, work, a, ALPACA, precompute=a.system.endswith("precomputed"))
    else:
        result = (run_finetuned if a.system.startswith("finetuned") else run_hf_padded)(folder, work, a)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        if line.startswith("{"):  # the shared reference script prints its result as JSON
            try:
                return json.loads(line)
            except ValueError:  # a library's own printout (TRL prints a dict at the end of training)
                continue
    raise RuntimeError(out.stdout + out.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bs", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--levers", nargs="*", choices=LEVERS, default=None,
                        help="also run finetuned with each lever changed (all when none is named)")
    parser.add_argument("--dpo", action="store_true",
                        help="also DPO: our trainer beside TRL's DPOTrainer (and with precomputed reference)")
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.system:
        child(a)
        return
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--bs", str(a.bs), "--seq", str(a.seq)]
    results: dict[str, dict[str, Any]] = {}
    for shape in a.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            make_model(shape, Path(tmp) / "model")
            levers = [] if a.levers is None else a.levers or list(LEVERS)
            systems = ["hf-padded", "finetuned", *(f"finetuned/{lever}" for lever in levers)]
            if a.dpo:
                systems += ["trl-dpo", "trl-dpo-precomputed", "finetuned-dpo"]
            row = {system: spawn([__file__, "--system", system, "--work", tmp, *common]) for system in systems}
            ref = spawn([str(SHARED / "bench" / "hf_peft_baseline.py"), "--shape", shape, "--device", "cpu",
                         "--bs", str(a.bs), "--seq", str(a.seq), "--mixed-min", "32", "--steps", str(a.steps),
                         "--warmup", str(a.warmup), "--rank", str(LORA_RANK)])
            row["reference"] = {"tokens_per_s": ref["tokens_per_s"], "s_per_step": ref["s_per_step"]}
            results[shape] = row
    print(f"\n{'shape':<14} {'system':<26} {'precision':>9} {'real tok/s':>11} {'s/step':>8} {'tok/step':>9} "
          f"{'peak RSS GB':>12} {'vs baseline':>13}")
    for shape, row in results.items():
        for system, r in row.items():
            base = row["trl-dpo"]["tokens_per_s"] if "dpo" in system else row["hf-padded"]["tokens_per_s"]
            rss = f"{r['peak_rss_gb']:.2f}" if "peak_rss_gb" in r else "-"
            per_step = f"{r['tokens_per_step']:.0f}" if "tokens_per_step" in r else "-"
            precision = r.get("precision", "-")
            print(f"{shape:<14} {system:<26} {precision:>9} {r['tokens_per_s']:>11.1f} {r['s_per_step']:>8.3f} "
                  f"{per_step:>9} {rss:>12} {r['tokens_per_s'] / base:>12.2f}x")
        if "finetuned-dpo" in row and row["finetuned-dpo"].get("reference_s") is not None:
            print(f"{shape:<14} (finetuned-dpo's reference pass before its first step: "
                  f"{row['finetuned-dpo']['reference_s']:.1f} s; DPO rows compare with trl-dpo)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu_count": os.cpu_count(), "args": vars(a), "results": results}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
