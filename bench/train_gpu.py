"""GPU training throughput, Qwen3-8B shape: finetuned's training step beside the plain HF + PEFT loop.

    python bench/train_gpu.py [--shape qwen3-8b] [--steps 8] [--seq 4096] [--quick] [--dpo] [--nproc N]

One script for the GPU machine; it prints the table last and writes bench/results/train_gpu.json.
Random weights (nothing to download), LoRA r16 on all linear layers, bf16.

  reference      ../shared/bench/hf_peft_baseline.py at its settings (bs 1 x 4096, with and without
                 activation checkpointing, mixed lengths in [256, 4096] padded): its best is the baseline
  finetuned      our step (worker/step.py: selective chunked loss, fused AdamW) on mixed-length
                 examples packed into rows of 4096 with per-example attention (data/batches.py)
  finetuned+ckpt the same with activation checkpointing
  qlora          method "qlora" (4-bit NF4 base + LoRA), the shape our first user trains on a 24 GB card
  max_seq_24gb   the longest packed row that fits 24 GB (memory capped with
                 torch.cuda.set_per_process_memory_fraction), LoRA and QLoRA, with and without
                 activation checkpointing
  ckpt_stall     how long a LoRA checkpoint holds the training thread (the write itself runs beside it)
  finetuned-dpo  (--dpo) our DPO step on pairs of random tokens packed into rows, the reference pass timed apart
  trl-dpo        (--dpo) TRL's DPOTrainer on the same shape and LoRA, 2 pairs a step, as a user runs it
  finetuned/Ngpu with --nproc N (N > 1): our step on N GPUs under torchrun (worker/ranks.py: each rank a row
                 of the step, gradients summed with NCCL), N rows a step; real tokens/s of the whole group
                 and its scaling over one GPU's (docs/scaling.md). Only this phase runs then.

Each method's model is built once and reused by all its measurements, and the JSON is rewritten
after every phase, so the whole run fits one call on the GPU machine and a run cut short keeps
what it measured. Real tokens/s counts non-padding tokens. MFU uses the reference script's LoRA
convention and --peak-tflops (989: H100/H200 dense bf16); for us its attention term counts the
span packed tokens really attend over (token-weighted mean example length), not the row length,
which would flatter packing (`mfu_at_row_length` has that figure too).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; FINETUNED_SHARED where it is elsewhere (a machine the checkout was copied to).
SHARED = Path(os.environ.get("FINETUNED_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "bench" / "results" / "train_gpu.json"
sys.path.insert(0, str(SHARED / "bench"))

from hf_peft_baseline import SHAPES, flops_per_token  # noqa: E402 - the reference's own shapes and FLOPs

from finetuned.checkpoints import TrainingProgress  # noqa: E402
from finetuned.config import LoraSettings, PreferenceSettings  # noqa: E402
from finetuned.data.batches import ExampleStore, PreferenceBatch, pack_rows, packed_batch  # noqa: E402
from finetuned.models.attention import use_packed_attention  # noqa: E402
from finetuned.models.loading import add_lora  # noqa: E402
from finetuned.worker import tensors  # noqa: E402
from finetuned.worker.loss import sequence_logps  # noqa: E402
from finetuned.worker.objectives import DPO, SFT  # noqa: E402
from finetuned.worker.step import accumulate, update  # noqa: E402

GB = 2**30
DEV = "cuda"  # --device cpu runs a smoke test of this script on a machine without a GPU


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def build(shape: str, seq: int, qlora: bool) -> tuple[torch.nn.Module, Any]:
    """The model once per method: every measurement of that method reuses it (8B builds cost minutes)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(max_position_embeddings=max(seq, 65536), **SHAPES[shape])
    torch.manual_seed(0)
    if qlora:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        with tempfile.TemporaryDirectory() as tmp:  # quantisation happens on load: save bf16 once, reload in 4-bit
            with torch.device(DEV):
                full = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
            full.save_pretrained(tmp)
            del full
            gc.collect()
            if DEV == "cuda":
                torch.cuda.empty_cache()
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, device_map={"": DEV},
                                                         attn_implementation="sdpa")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        with torch.device(DEV):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    use_packed_attention(model)  # as load_model does: packed rows attend per example
    model = add_lora(model, LoraSettings(r=16, alpha=32, dropout=0.0))
    model.train()
    return model, cfg


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    base = model.get_base_model()
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def mixed_rows(seq: int, rows: int, vocab: int, seed: int) -> tuple[list[Any], float]:
    """Examples of lengths uniform in [256, seq] (as the reference's --mixed-min 256), packed into rows.

    Also returns the token-weighted mean example length: the attention span a packed token
    really has, which is what the MFU's attention term should count for us.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min(256, seq // 2), seq + 1, size=rows * 8)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = rng.integers(0, vocab, size=int(offsets[-1]))
    mask = np.ones_like(tokens, dtype=np.uint8)
    mask[offsets[:-1]] = 0  # an example's first token has no prediction
    store = ExampleStore(tokens, mask, offsets)
    starts = [*pack_rows(lengths, seq).tolist(), len(lengths)]
    packed = [list(range(a, b)) for a, b in itertools.pairwise(starts)][:rows]
    used = lengths[: starts[len(packed)]].astype(np.float64)
    span = float((used**2).sum() / used.sum())
    return [packed_batch(store, [row], pad_id=0).to(DEV) for row in packed], span


def run_ours(model: torch.nn.Module, cfg: Any, seq: int, steps: int, warmup: int, peak: float,
             stall: bool = False, world: Any = None) -> dict[str, Any]:
    """`world` (worker/ranks.py): the step is one row per rank, each rank training its own, gradients summed."""
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=DEV == "cuda")
    n = world.size if world is not None else 1
    rows, span = mixed_rows(seq, (warmup + steps) * n, cfg.vocab_size, seed=1)
    tokens, t0 = 0, 0.0
    try:
        for i in range(warmup + steps):
            step = rows[i * n:(i + 1) * n]
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            if i >= warmup:
                tokens += sum(b.n_tokens for b in step)
            mine = step if world is None else [step[world.rank]]
            loss, _ = accumulate(model, mine, SFT(), units=sum(b.n_loss_tokens for b in step))
            if world is not None:
                world.sync_gradients(params)
            update(opt, params, 1e-4, 1.0)
        loss_value = loss.item()
        sync()
        dt = (time.perf_counter() - t0) / steps
        result = {"tokens_per_s": tokens / steps / dt, "s_per_step": dt, "loss": loss_value,
                  "attention_span": round(span),
                  "peak_mem_gib": torch.cuda.max_memory_allocated() / GB if DEV == "cuda" else None}
        # The reference's convention, with the attention term at the span packed tokens really attend over.
        result["mfu"] = result["tokens_per_s"] * flops_per_token(cfg, span) / (peak * 1e12)
        result["mfu_at_row_length"] = result["tokens_per_s"] * flops_per_token(cfg, seq) / (peak * 1e12)
        if stall:
            result["ckpt_stall_s"] = checkpoint_stall(model, opt)
        return result
    finally:
        del opt, rows
        for p in params:
            p.grad = None
        if DEV == "cuda":
            torch.cuda.empty_cache()


def mixed_pairs(seq: int, rows: int, vocab: int, seed: int) -> list[PreferenceBatch]:
    """Pairs of random tokens (prompt in [128, seq/4], answers in [64, seq/4]) packed into rows of `seq` tokens."""
    rng = np.random.default_rng(seed)
    n = rows * 8
    prompts, answers = rng.integers(128, seq // 4 + 1, size=n), rng.integers(64, seq // 4 + 1, size=(n, 2))
    lengths = (prompts[:, None] + answers).reshape(-1)  # chosen, rejected of each pair side by side
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = rng.integers(0, vocab, size=int(offsets[-1]))
    mask = np.ones_like(tokens, dtype=np.uint8)
    for i, start in enumerate(offsets[:-1]):
        mask[start : start + prompts[i // 2]] = 0  # the prompt never carries loss
    store = ExampleStore(tokens, mask, offsets)
    starts = [*pack_rows(lengths.reshape(-1, 2).sum(1), seq).tolist(), n]
    out = []
    for a, b in itertools.pairwise(starts[: rows + 1]):
        seqs = [s for e in range(a, b) for s in (2 * e, 2 * e + 1)]
        batch = packed_batch(store, [seqs], pad_id=0, sequences=True).to(DEV)
        examples = np.arange(a, b).repeat(2)
        out.append(PreferenceBatch(batch, examples, np.tile([0, 1], b - a), b - a))
    return out


def run_ours_dpo(model: torch.nn.Module, cfg: Any, seq: int, steps: int, warmup: int) -> dict[str, Any]:
    """Our DPO step on packed pairs; the reference pass (once, before training) timed apart."""
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=DEV == "cuda")
    batches = mixed_pairs(seq, warmup + steps, cfg.vocab_size, seed=2)
    n_examples = int(max(b.examples.max() for b in batches)) + 1
    reference = np.zeros((n_examples, 2), dtype=np.float32)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            sums, _ = sequence_logps(model, batch.policy)
            reference[batch.examples, batch.slots] = sums.float().cpu().numpy()
    sync()
    reference_s = time.perf_counter() - t0
    objective = DPO(PreferenceSettings(), reference)
    tokens = 0
    try:
        for i, batch in enumerate(batches):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            if i >= warmup:
                tokens += batch.n_tokens
            loss, _ = accumulate(model, [batch], objective)
            update(opt, params, 1e-4, 1.0)
        loss_value = loss.item()
        sync()
        dt = (time.perf_counter() - t0) / steps
        return {"tokens_per_s": tokens / steps / dt, "s_per_step": dt, "loss": loss_value,
                "reference_s": reference_s, "reference_s_per_step_of_data": reference_s / len(batches),
                "peak_mem_gib": torch.cuda.max_memory_allocated() / GB if DEV == "cuda" else None}
    finally:
        del opt, batches
        for p in params:
            p.grad = None
        if DEV == "cuda":
            torch.cuda.empty_cache()


def run_trl_dpo(a: argparse.Namespace) -> dict[str, Any]:
    """TRL's DPOTrainer on a fresh model of the same shape (TRL adds the same LoRA), random-token pairs as text."""
    import dpo_systems
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from finetuned.models.builtin import _tokenizer_files

    tokenizer = AutoTokenizer.from_pretrained(str(_tokenizer_files()))
    cfg = Qwen3Config(max_position_embeddings=max(a.seq, 65536), **SHAPES[a.shape])
    torch.manual_seed(0)
    with torch.device(DEV):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if DEV == "cuda" else torch.float32,
                                                 attn_implementation="sdpa")
    rng = np.random.default_rng(3)
    words = lambda n: tokenizer.decode(rng.integers(1000, 40000, size=int(n)).tolist())  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": words(rng.integers(128, a.seq // 4 + 1))}],
             "chosen": [{"role": "assistant", "content": words(rng.integers(64, a.seq // 4 + 1))}],
             "rejected": [{"role": "assistant", "content": words(rng.integers(64, a.seq // 4 + 1))}]}
            for _ in range(2 * (a.warmup + a.steps))]
    with tempfile.TemporaryDirectory() as work:
        try:
            return dpo_systems.trl_dpo(model, tokenizer, rows, Path(work), 2, a.seq, a.warmup, a.steps,
                                       bf16=DEV == "cuda")
        finally:
            del model
            if DEV == "cuda":
                torch.cuda.empty_cache()


def checkpoint_stall(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """Seconds the training thread is held by a LoRA checkpoint (snapshot; the write runs beside it)."""
    weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
    progress = TrainingProgress(job_id="bench", step=1, total_steps=1, line_step=1, seed=0, base_model="bench",
                                base_hash="", method="lora", mode="independent")
    writer = tensors.Writer()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        snap = tensors.snapshot(progress, weights, opt)
        writer.save(Path(tmp), snap, keep=1, wait=False)
        stall = time.perf_counter() - t0
        writer.join()
    return stall


def fits(model: torch.nn.Module, cfg: Any, seq: int, budget_gb: float) -> bool:
    """One step of a row of `seq` tokens within `budget_gb` of GPU memory, weights included."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * GB / total))
    try:
        run_ours(model, cfg, seq, steps=1, warmup=0, peak=989)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)


def longest(model: torch.nn.Module, cfg: Any, budget_gb: float) -> int:
    best, lo, hi = 0, 1, 128  # in units of 512 tokens: 512 .. 65536, seven probes
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(model, cfg, mid * 512, budget_gb):
            best, lo = mid * 512, mid + 1
        else:
            hi = mid - 1
    return best


def on_ranks(a: argparse.Namespace) -> None:
    """One rank of `--nproc`: our LoRA step on a row per rank; rank 0 adds the group's figures to the JSON."""
    from finetuned.worker.ranks import Ranks, join_group

    global DEV
    device = join_group()
    DEV = device.type  # "cuda" is this rank's GPU: join_group made it the current device
    world = Ranks(None, device)
    model, cfg = build(a.shape, a.seq, qlora=False)
    result = run_ours(model, cfg, a.seq, a.steps, a.warmup, a.peak_tflops * world.size, world=world)
    if world.main:
        out = RESULTS if device.type == "cuda" else RESULTS.with_name("train_gpu_smoke.json")
        results = json.loads(out.read_text()) if out.exists() else {}
        one = results.get("finetuned", {}).get("tokens_per_s")
        result["scaling_over_one_gpu"] = result["tokens_per_s"] / one if one else None
        results[f"finetuned/{world.size}gpu"] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"finetuned on {world.size} ranks: {json.dumps(result)}")
    world.barrier()  # no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


def reference(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(SHARED / "bench" / "hf_peft_baseline.py"), *args],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": (out.stderr or out.stdout)[-400:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-8b", choices=list(SHAPES))
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--quick", action="store_true", help="skip the 24 GB sequence-length search")
    parser.add_argument("--dpo", action="store_true", help="also DPO: our step beside TRL's DPOTrainer (batch 2 pairs)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a smoke test of the script itself (use --shape tiny --quick)")
    parser.add_argument("--nproc", type=int, default=1, help="measure our step on N GPUs of this machine")
    a = parser.parse_args()
    global DEV
    DEV = a.device
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs a CUDA GPU; on the CPU run bench/train_cpu.py")
    if "RANK" in os.environ:  # one of the ranks torchrun started for --nproc
        on_ranks(a)
        return
    if a.nproc > 1:  # this script again under torchrun, without --nproc (torchrun would take it for its own)
        i = sys.argv.index("--nproc") if "--nproc" in sys.argv else None
        rest = sys.argv[1:i] + sys.argv[i + 2:] if i else [x for x in sys.argv[1:] if not x.startswith("--nproc=")]
        sys.exit(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc-per-node={a.nproc}", __file__, *rest]).returncode)
    common = ["--shape", a.shape, "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup),
              "--peak-tflops", str(a.peak_tflops), "--mixed-min", str(min(256, a.seq // 2)), "--device", DEV]
    device = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    results: dict[str, Any] = {"device": device, "shape": a.shape, "seq": a.seq}
    out = RESULTS if DEV == "cuda" else RESULTS.with_name("train_gpu_smoke.json")  # never mistaken for GPU figures
    started = time.monotonic()

    def save(name: str, value: Any) -> None:  # after every phase: a run cut short keeps what it measured
        results[name] = value
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[{time.monotonic() - started:5.0f} s] {name}: {json.dumps(value)[:300]}", flush=True)

    refs = {"reference": reference(common), "reference+ckpt": reference([*common, "--grad-ckpt"])}
    for name, value in refs.items():
        save(name, value)
    for method, qlora in (("finetuned", False), ("qlora", True)):
        try:
            model, cfg = build(a.shape, a.seq, qlora)
        except torch.OutOfMemoryError as exc:
            save(method, {"error": f"out of memory while building: {exc}"[:200]})
            continue
        if not qlora and a.dpo:
            try:
                save("finetuned-dpo", run_ours_dpo(model, cfg, a.seq, a.steps, a.warmup))
            except torch.OutOfMemoryError as exc:
                save("finetuned-dpo", {"error": f"out of memory: {exc}"[:200]})
        for ckpt in (False, True):
            if qlora and ckpt:
                continue  # QLoRA's speed is measured once; its memory reach with and without below
            name = method + ("+ckpt" if ckpt else "")
            set_checkpointing(model, ckpt)
            try:
                save(name, run_ours(model, cfg, a.seq, a.steps, a.warmup, a.peak_tflops,
                                    stall=not qlora and not ckpt))
            except torch.OutOfMemoryError as exc:
                save(name, {"error": f"out of memory: {exc}"[:200]})
        if not a.quick and DEV == "cuda":
            for ckpt in (False, True):
                set_checkpointing(model, ckpt)
                label = ("qlora" if qlora else "lora") + ("+ckpt" if ckpt else "")
                save(f"max_seq_24gb/{label}", longest(model, cfg, 24.0))
        del model
        if DEV == "cuda":
            torch.cuda.empty_cache()
    if a.dpo:
        try:
            save("trl-dpo", run_trl_dpo(a))
        except torch.OutOfMemoryError as exc:
            save("trl-dpo", {"error": f"out of memory: {exc}"[:200]})
        except ImportError as exc:  # a GPU machine without TRL and datasets: our row stands alone
            save("trl-dpo", {"error": f"TRL is not installed here: {exc}"[:200]})
    base = max((r.get("tokens_per_s", 0) for r in refs.values()), default=0) or float("nan")
    print(f"\n{results['device']}, {a.shape}, rows of {a.seq} tokens, LoRA r16, bf16")
    print(f"{'system':<16} {'real tok/s':>11} {'MFU':>7} {'peak GiB':>9} {'vs best reference':>18}")
    for name in ("reference", "reference+ckpt", "finetuned", "finetuned+ckpt", "qlora"):
        r = results.get(name, {"error": "not run"})
        if "tokens_per_s" not in r:
            print(f"{name:<16} {r.get('error', '?')[:60]}")
            continue
        mem = r.get("peak_mem_gib") or 0
        print(f"{name:<16} {r['tokens_per_s']:>11.0f} {100 * r['mfu']:>6.1f}% {mem:>9.1f} "
              f"{r['tokens_per_s'] / base:>17.2f}x")
    if a.dpo:
        ours, theirs = results.get("finetuned-dpo", {}), results.get("trl-dpo", {})
        for name, r in (("trl-dpo", theirs), ("finetuned-dpo", ours)):
            if "tokens_per_s" in r:
                ratio = r["tokens_per_s"] / theirs["tokens_per_s"] if "tokens_per_s" in theirs else float("nan")
                print(f"{name:<16} {r['tokens_per_s']:>11.0f} {'':>7} {r.get('peak_mem_gib') or 0:>9.1f} "
                      f"{ratio:>17.2f}x (vs trl-dpo)")
            else:
                print(f"{name:<16} {r.get('error', 'not run')[:60]}")
    if "ckpt_stall_s" in results.get("finetuned", {}):
        print(f"checkpoint stall (LoRA): {results['finetuned']['ckpt_stall_s']:.3f} s")
    reach = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("max_seq_24gb/")}
    if reach:
        print("longest packed row in 24 GB: " + ", ".join(f"{k} {v}" for k, v in reach.items()))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
