"""The DPO rows of bench/train_cpu.py: our trainer beside TRL's DPOTrainer, same model, data, LoRA and batch.

Pairs come from the Alpaca demo set: the prompt is a record's instruction (and input), the chosen
answer its output, the rejected one the next record's output. Both systems render them with the
model's chat template (TRL's conversational form), train LoRA r16 on every linear layer with
`batch_size` pairs a step, float32 on the CPU, and time only the steps after the warm-up ones.

    finetuned-dpo        the daemon's recipe: reference log-probabilities once before the first step
                         (timed apart, as `reference_s`), pairs packed in rows, selective logits
    trl-dpo              TRL's DPOTrainer as a user runs it: the reference forward (adapter disabled) each step
    trl-dpo-precomputed  with `precompute_ref_log_probs=True` (its precomputation not timed)

Real (non-padding) tokens count both answers of each pair, prompt included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

LORA_RANK = 16


def pairs(alpaca: Path, n: int) -> list[dict[str, Any]]:
    records = json.loads(alpaca.read_text(encoding="utf-8"))
    out = []
    for i, record in enumerate(records[:n]):
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        other = records[(i + 1) % len(records)]["output"]
        out.append({"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": record["output"]}],
                    "rejected": [{"role": "assistant", "content": other}]})
    return out


def run_finetuned_dpo(folder: Path, work: Path, a: argparse.Namespace, alpaca: Path) -> dict[str, Any]:
    from finetuned.config import Config, save_config
    from finetuned.processes.protocol import Phase, Started, Step, Train
    from finetuned.queue.job import Job, JobStatus
    from finetuned.worker.cache import ModelCache
    from finetuned.worker.recipe import run_job
    from finetuned.worker.world import Solo
    from finetuned.workspace import Workspace

    ws = Workspace.at(work / "ws-dpo")
    ws.create()
    config = Config(base_model=str(folder))
    config.training.batch_size, config.training.max_seq_len = a.bs, a.seq
    config.training.max_steps, config.training.checkpoint_every_steps = a.warmup + a.steps, 10_000
    config.data.holdout_fraction, config.data.overlong = 0.0, "truncate"
    config.previews.every_steps = 0
    save_config(ws.config_path, config)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs(alpaca, 4 * a.bs * (a.warmup + a.steps))))
    steps: list[Step] = []
    marks: dict[str, float] = {}

    def report(message: Any) -> None:
        if isinstance(message, Step):
            steps.append(message)
        elif isinstance(message, Phase) and message.phase.startswith("scoring"):
            marks["reference"] = time.perf_counter()
        elif isinstance(message, Started) and "reference" in marks:
            marks["reference"] = time.perf_counter() - marks["reference"]

    job = Job(id="bench", file=data.name, order=1.0, path=str(data), status=JobStatus.TRAINING)
    run_job(ws, Train(job=job, file=data, config=config), ModelCache(ws), Solo(report, lambda _step: None))
    timed = steps[a.warmup:]
    tokens = timed[-1].tokens - steps[a.warmup - 1].tokens if a.warmup else timed[-1].tokens
    seconds = sum(m.step_seconds for m in timed)
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / len(timed),
            "tokens_per_step": tokens / len(timed), "loss": timed[-1].loss, "reference_s": marks.get("reference")}


def run_trl_dpo(folder: Path, work: Path, a: argparse.Namespace, alpaca: Path, precompute: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    return trl_dpo(model, AutoTokenizer.from_pretrained(str(folder)), pairs(alpaca, a.bs * (a.warmup + a.steps)),
                   work, a.bs, a.seq, a.warmup, a.steps, precompute=precompute)


def trl_dpo(model: Any, tokenizer: Any, rows: list[dict[str, Any]], work: Path, bs: int, seq: int, warmup: int,
            steps: int, precompute: bool = False, bf16: bool = False) -> dict[str, Any]:
    """TRL's DPOTrainer on `model` (a plain causal LM; TRL adds the LoRA), timed per step after `warmup` steps."""
    import os

    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_DATASETS_CACHE=str(work / "hf-datasets"))
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_args: Any, **_kwargs: Any) -> None:
            times.append(time.perf_counter())

        def on_step_end(self, *_args: Any, **_kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[-1] = time.perf_counter() - times[-1]

    args = DPOConfig(output_dir=str(work / "trl-out"), bf16=bf16, use_cpu=not torch.cuda.is_available(),
                     gradient_checkpointing=False, report_to="none", per_device_train_batch_size=bs, max_length=seq,
                     max_steps=warmup + steps, learning_rate=1e-4, logging_steps=10_000, save_strategy="no",
                     dataloader_num_workers=0, precompute_ref_log_probs=precompute)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Clock()],
                         peft_config=LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    collate = trainer.data_collator

    def counting(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds, counted = sum(times[warmup:]), sum(tokens[warmup : warmup + steps])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"tokens_per_s": counted / seconds, "s_per_step": seconds / steps, "tokens_per_step": counted / steps,
            "peak_mem_gib": peak}
