"""export --format gguf|ollama: llama.cpp's own converter; the GGUF loads back with transformers and answers as the
Hugging Face model; the Modelfile prompts as training did; every adapter and export carries its chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from gotemplate import modelfile_fields, ollama_prompt
from helpers import chat_lines, make_workspace
from lifecycle_helpers import base_plus_adapter_logits, cli, lifecycle_config, logits, train_job
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetuned.data.masking import FALLBACK_TEMPLATE
from finetuned.fsio import sha256_file
from finetuned.lifecycle import converter, ollama
from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.export import export
from finetuned.lifecycle.records import list_adapters
from finetuned.lifecycle.targets import load, resolve
from finetuned.workspace import Workspace

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three colours.",
           "How do I boil an egg?", "Explain gravity in one sentence."]
CONVERSATIONS = [[{"role": "user", "content": "Say hi number 3."}],
                 [{"role": "system", "content": "Count."}, {"role": "user", "content": "1"},
                  {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]]


def greedy(model, tokenizer, new_tokens: int = 24) -> list[list[int]]:
    """Greedy answers to PROMPTS in the tokenizer's chat template, as one left-padded batch."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.eval().generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def as_f16(model):
    """The model as an f16 GGUF holds it: matrices rounded to float16, 1-D tensors (norms) kept in float32."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(parameter.half().float())
    return model


def same_weights(a, b) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def from_gguf(folder: Path):
    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=ollama.GGUF_FILE, dtype=torch.float32)


def gguf_field(folder: Path, key: str):
    return GGUFReader(folder / ollama.GGUF_FILE).fields[key].contents()


def base_template(ws: Workspace) -> str:
    return AutoTokenizer.from_pretrained(str(ws.base_models / "tiny")).chat_template


def test_published_adapter_carries_its_tokenizer_and_chat_template(trained):
    (adapter,) = list_adapters(trained)
    files = {p.name for p in adapter.path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= files
    assert AutoTokenizer.from_pretrained(str(adapter.path)).chat_template == base_template(trained)


def test_gguf_of_an_adapter_loads_back_and_answers_as_the_merged_model(trained, tmp_path, gguf_converter):
    """The GGUF holds exactly the merged model's weights rounded to f16 (llama.cpp's Q/K reordering undone by
    transformers on load), so the model it loads back is that model and answers token for token as it does."""
    (adapter,) = list_adapters(trained)
    out = tmp_path / "my-assistant"
    done = cli("export", adapter.job_id, str(out), "--format", "gguf", "--root", str(trained.root))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "finetuned.json", "model.gguf"]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary folder left"
    meta = json.loads((out / "finetuned.json").read_text())
    assert (meta["kind"], meta["from"], meta["type"], meta["job"]["file"]) == ("gguf", "adapter", "f16", "first.jsonl")
    assert meta["converter"] == {"package": "llama-cpp-python", "version": converter.VERSION,
                                 "sha256": converter.SHA256, "script": "convert_hf_to_gguf.py"}
    assert meta["gguf"]["sha256"] == sha256_file(out / "model.gguf")
    assert 'gguf_file="model.gguf"' in (out / "README.md").read_text()
    assert gguf_field(out, "general.name") == "my-assistant", "what llama.cpp and LM Studio show"
    card = (out / "README.md").read_text()
    assert card.count("- lora\n") == 1 and "job.json" not in card, "lora tagged once; no file the export lacks"

    base = AutoModelForCausalLM.from_pretrained(str(trained.base_models / "tiny"), dtype=torch.float32)
    merged = as_f16(PeftModel.from_pretrained(base, str(adapter.path)).merge_and_unload())
    tokenizer = AutoTokenizer.from_pretrained(str(adapter.path))
    loaded = from_gguf(out)
    assert same_weights(loaded, merged)
    assert greedy(loaded, tokenizer) == greedy(merged, tokenizer)
    assert gguf_field(out, "general.file_type") == 1  # MOSTLY_F16
    assert gguf_field(out, "tokenizer.chat_template") == meta["chat_template"] == base_template(trained)
    from_file = AutoTokenizer.from_pretrained(str(out), gguf_file=ollama.GGUF_FILE)
    assert [from_file(p)["input_ids"] for p in PROMPTS] == [tokenizer(p)["input_ids"] for p in PROMPTS]

    # q8_0: blocks of 32 weights share one f16 scale (their largest / 127), each weight off by half a step, plus
    # the scale's own rounding: measured at most 0.57 of a step here.
    q8 = export(trained, adapter.job_id, tmp_path / "q8", fmt="gguf", gguf_type="q8_0")
    assert gguf_field(q8, "general.file_type") == 7  # MOSTLY_Q8_0
    exact, quantised = merged.state_dict(), from_gguf(q8).state_dict()
    for name, weights in exact.items():
        if weights.dim() > 1:
            step = weights.reshape(-1, 32).abs().amax(dim=1, keepdim=True) / 127
            error = (quantised[name] - weights).reshape(-1, 32).abs()
            assert (error <= step * 0.6 + 1e-6).all(), name


def test_ollama_export_of_the_newest_checkpoint(trained, tmp_path, gguf_converter):
    out = export(trained, "latest", tmp_path / "ollama", fmt="ollama")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "finetuned.json", "model.gguf"]
    meta = json.loads((out / "finetuned.json").read_text())
    assert (meta["from"], meta["type"], meta["ollama"]["template_family"]) == ("checkpoint", "f16", "ChatML")
    assert "ollama create NAME -f" in (out / "README.md").read_text()
    # Its weights are the checkpoint's, LoRA merged in, in f16.
    model, tokenizer = load(resolve(trained, "latest"), trained.load_config())
    assert same_weights(from_gguf(out), as_f16(model.merge_and_unload()))
    # Its Modelfile gives, for a conversation, the text the training template gives; BOS is the runtime's.
    modelfile = (out / "Modelfile").read_text()
    assert modelfile_fields(modelfile)["FROM"] == "./model.gguf"
    lead = tokenizer.bos_token if gguf_field(out, "tokenizer.ggml.add_bos_token") else ""
    for messages in [*map(list, ollama.PROBES), *CONVERSATIONS]:
        assert lead + ollama_prompt(modelfile, messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    assert gguf_field(out, "tokenizer.chat_template") == tokenizer.chat_template


def test_hf_export_of_a_checkpoint_is_its_adapter_or_its_merged_model(trained, tmp_path):
    model, _tokenizer = load(resolve(trained, "latest"), trained.load_config())
    expected = logits(model)
    pair = export(trained, "latest", tmp_path / "pair")
    assert json.loads((pair / "finetuned.json").read_text())["kind"] == "checkpoint"
    assert (base_plus_adapter_logits(pair / "base", pair / "adapter") - expected).abs().max().item() < 1e-5
    assert AutoTokenizer.from_pretrained(str(pair / "adapter")).chat_template == base_template(trained)
    merged = export(trained, "latest", tmp_path / "merged", merged=True)
    assert (logits(merged) - expected).abs().max().item() < 1e-4


def test_a_base_without_a_chat_template_carries_the_fallback_everywhere(tmp_path, tiny_model_dir, gguf_converter):
    """Training renders with FALLBACK_TEMPLATE; the adapter, the version, every export and the GGUF carry it."""
    plain = tmp_path / "plain-base"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    assert AutoTokenizer.from_pretrained(str(plain)).chat_template is None
    config = lifecycle_config()
    config.base_model = str(plain)
    ws = make_workspace(tmp_path / "ws", config)
    job = train_job(ws, "plain.jsonl", chat_lines(8))

    def template(folder: Path) -> str | None:
        return AutoTokenizer.from_pretrained(str(folder)).chat_template

    assert template(ws.adapter_dir(job.id)) == FALLBACK_TEMPLATE
    pair = export(ws, job.id, tmp_path / "pair")
    assert template(pair / "adapter") == FALLBACK_TEMPLATE
    assert 'AutoTokenizer.from_pretrained("' + str(pair) + '/adapter")' in (pair / "README.md").read_text()
    assert template(export(ws, job.id, tmp_path / "merged", merged=True)) == FALLBACK_TEMPLATE

    out = export(ws, job.id, tmp_path / "ollama", fmt="ollama")
    assert json.loads((out / "finetuned.json").read_text())["ollama"]["template_family"] == ollama.PLAIN.name
    tokenizer = AutoTokenizer.from_pretrained(str(ws.adapter_dir(job.id)))
    for messages in CONVERSATIONS:
        assert ollama_prompt((out / "Modelfile").read_text(), messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    assert gguf_field(out, "tokenizer.chat_template") == FALLBACK_TEMPLATE

    version = consolidate(ws, job.id).version
    assert version.path is not None and template(version.path) == FALLBACK_TEMPLATE
    # The original base has no template of its own: its GGUF gets the one training would use, the base stays as is.
    raw = export(ws, str(plain), tmp_path / "plain-gguf", fmt="gguf")
    assert gguf_field(raw, "tokenizer.chat_template") == FALLBACK_TEMPLATE
    assert not (plain / "chat_template.jinja").exists()


def _opt_model(folder: Path, tokenizer_from: Path) -> Path:
    """A tiny OPT: a model transformers loads and llama.cpp's converter does not know."""
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                       num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64)
    OPTForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_bad_input_is_refused_in_one_line_and_leaves_nothing(trained, tmp_path, tiny_model_dir, gguf_converter):
    root = ("--root", str(trained.root))

    def refused(*args: str, code: int = 1) -> str:
        done = cli("export", *args, *root)
        assert done.returncode == code, done.stdout + done.stderr
        return done.stderr

    assert "'q4_k' is not one of 'f16', 'q8_0'" in refused("base", str(tmp_path / "a"), "--format", "gguf",
                                                            "--type", "q4_k", code=2)
    assert "'exe' is not one of 'hf', 'gguf', 'ollama'" in refused("base", str(tmp_path / "a"), "--format", "exe",
                                                                  code=2)
    assert "--type is for --format gguf or ollama" in refused("base", str(tmp_path / "a"), "--type", "q8_0")
    assert "name the folder to create" in refused("base", "--format", "gguf")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert "exists and is not empty" in refused("base", str(full), "--format", "ollama")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]

    opt = _opt_model(tmp_path / "opt", tiny_model_dir)
    message = refused(str(opt), str(tmp_path / "b"), "--format", "gguf")
    assert "llama.cpp's converter could not convert" in message and "OPTForCausalLM is not supported" in message
    assert message.strip().count("\n") == 0, message

    odd = tmp_path / "odd-template"
    shutil.copytree(tiny_model_dir, odd)
    (odd / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    assert "none of the families" in refused(str(odd), str(tmp_path / "c"), "--format", "ollama")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert not list(tmp_path.glob(".*.tmp")), "no temporary folder left"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # four model loads and three generations of a 135M model on a shared CPU
def test_smollm2_gguf_answers_as_the_hugging_face_model(tmp_path, gguf_converter):
    """The real 135M model: the f16 GGUF is the model in f16, weight for weight, and its greedy answers on 5 prompts
    match the Hugging Face model's in f16 token for token (and, measured, the float32 model's: 5 of 5); q8_0
    loads back and its answers are counted against them (measured: 5 of 5)."""
    config = lifecycle_config()
    config.base_model = "builtin:smollm2-135m-instruct"
    ws = make_workspace(tmp_path / "ws", config)
    f16 = export(ws, "base", tmp_path / "f16", fmt="gguf")
    folder = ws.base_models / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    reference = as_f16(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))
    loaded = from_gguf(f16)
    assert same_weights(loaded, reference)
    expected = greedy(reference, tokenizer)
    assert greedy(loaded, tokenizer) == expected
    assert gguf_field(f16, "tokenizer.chat_template") == tokenizer.chat_template

    q8 = export(ws, "base", tmp_path / "q8", fmt="ollama", gguf_type="q8_0")
    same = sum(a == b for a, b in zip(greedy(from_gguf(q8), tokenizer), expected, strict=True))
    print(f"q8_0: {same} of {len(PROMPTS)} greedy answers match the f16 model's")
    assert same >= 3, f"q8_0 matched {same} of {len(PROMPTS)}"
    assert modelfile_fields((q8 / "Modelfile").read_text())["SYSTEM"].startswith("You are a helpful AI assistant")
