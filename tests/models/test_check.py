"""Can this config train? Checked before any file is accepted, each refusal one line naming what to change."""

from __future__ import annotations

import shutil

import pytest

from finetuned.config import Config
from finetuned.models.check import check_base_model
from finetuned.models.loading import ModelError
from finetuned.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    ws.create()
    return ws


def refusal(config: Config, ws: Workspace) -> str:
    with pytest.raises(ModelError) as caught:
        check_base_model(config, ws)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_the_tiny_builtin_can_train(ws, tiny_model_dir):
    checked = check_base_model(Config(base_model="builtin:tiny"), ws)
    assert checked.path == ws.base_models / "tiny"
    assert checked.summary.startswith("llama, 2 layers") and "chat template" in checked.summary


def encoder_folders(root, tiny_model_dir):
    """Tiny BERT and T5 folders with a real tokenizer, made locally: what a user may point base_model at."""
    from transformers import BertConfig, T5Config

    folders = {}
    for name, config in (
        ("bert", BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, architectures=["BertForMaskedLM"])),
        ("t5", T5Config(vocab_size=100, d_model=32, d_ff=64, num_layers=1, num_heads=2,
                        architectures=["T5ForConditionalGeneration"])),
    ):
        folder = root / name
        config.save_pretrained(folder)
        for f in tiny_model_dir.iterdir():
            if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
                shutil.copy(f, folder / f.name)
        folders[name] = folder
    return folders


def test_bert_and_t5_folders_are_refused_in_one_line(ws, tmp_path, tiny_model_dir):
    folders = encoder_folders(tmp_path, tiny_model_dir)
    bert = refusal(Config(base_model=str(folders["bert"])), ws)
    assert "bert" in bert and "encoder, not a causal language model" in bert
    t5 = refusal(Config(base_model=str(folders["t5"])), ws)
    assert "t5" in t5 and "T5ForConditionalGeneration" in t5 and "not a causal language model" in t5


def test_a_mistyped_lora_target_is_named_with_the_layers_there_are(ws, tiny_model_dir):
    config = Config(base_model="builtin:tiny")
    config.lora.target_modules = ["q_proj", "v_prj"]
    message = refusal(config, ws)
    assert message.startswith("lora.target_modules: 'v_prj' matches no module")
    assert "q_proj" in message and "down_proj" in message
    config.lora.target_modules = "mlp"  # a regular expression, as peft reads a string: nothing is called that
    assert "'mlp' matches no module" in refusal(config, ws)
    config.lora.target_modules = [r"mlp"]  # a suffix that names LlamaMLP blocks, which LoRA cannot wrap
    assert "LlamaMLP" in refusal(config, ws)


def test_relative_base_model_paths_are_read_from_the_workspace_never_the_current_folder(
        ws, tmp_path, tiny_model_dir, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, elsewhere / "models" / "mine")
    monkeypatch.chdir(elsewhere)
    config = Config(base_model="models/mine")
    message = refusal(config, ws)
    assert f"no such folder {ws.root / 'models' / 'mine'}" in message and "read from the workspace" in message
    shutil.copytree(tiny_model_dir, ws.root / "models" / "mine")
    assert check_base_model(config, ws).path == ws.root / "models" / "mine"
    shutil.copytree(tiny_model_dir, ws.base_models / "v2")
    assert check_base_model(Config(base_model="v2"), ws).path == ws.base_models / "v2", "versions live there"


def test_a_hub_id_gets_a_hint_instead_of_a_download(ws):
    message = refusal(Config(base_model="HuggingFaceTB/SmolLM2-135M-Instruct"), ws)
    assert "no such folder" in message and "hub id is never downloaded" in message
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct" in message


def test_init_adapter_is_checked_like_the_base_model(ws, tmp_path, tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = Config(base_model="builtin:tiny")
    config.training.init_adapter = "models/adapters/none"
    assert "no PEFT adapter at" in refusal(config, ws)
    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "other")
    config.training.init_adapter = str(tmp_path / "other")
    assert "made for another model" in refusal(config, ws)
    tiny = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(ws.adapters / "20250101_000000")
    config.training.init_adapter = "20250101_000000"  # a job's id names its published adapter
    assert check_base_model(config, ws).adapter == ws.adapters / "20250101_000000"
