"""Preference data as TRL, LLaMA-Factory and OpenAI write it: pairs (DPO, ORPO, SimPO) and labelled answers (KTO).

Each shape goes through `check_file`, which tokenises exactly as a job does: what is trained in each
sequence (only the answer and its end-of-turn token, never the prompt) is read back from the masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_helpers import write_jsonl

from finetuned.config import DataSettings
from finetuned.data import check_file, load_meta, prepare
from finetuned.data.tokenize import LABELS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
END = "<|im_end|>"
PROMPT = [{"role": "user", "content": "2+2?"}]

PAIR_SHAPES = {
    "trl-standard": {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    "trl-conversational": {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "4"}],
                           "rejected": [{"role": "assistant", "content": "5"}]},
    "trl-implicit-prompt": {"chosen": [*PROMPT, {"role": "assistant", "content": "4"}],
                            "rejected": [*PROMPT, {"role": "assistant", "content": "5"}]},
    "llamafactory-alpaca": {"instruction": "2+2?", "input": "", "chosen": "4", "rejected": "5"},
    "llamafactory-sharegpt": {"conversations": [{"from": "human", "value": "2+2?"}],
                              "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}},
    "openai-preference": {"input": {"messages": PROMPT}, "preferred_output": [{"role": "assistant", "content": "4"}],
                          "non_preferred_output": [{"role": "assistant", "content": "5"}]},
}


def check(path: Path, tokenizer: Any, objective: str = "dpo") -> dict[str, Any]:
    return check_file(path, tokenizer, DataSettings(), 512, 3, objective)


@pytest.mark.parametrize("shape", list(PAIR_SHAPES))
def test_every_pair_shape_trains_the_answers_only(tmp_path, tokenizer, shape):
    report = check(write_jsonl(tmp_path / "pairs.jsonl", [PAIR_SHAPES[shape]] * 3), tokenizer, "simpo")
    assert (report["ok"], report["format"], report["objective"], report["kept"]) == (True, "preference", "simpo", 3)
    shown = report["shown"][0]
    assert shown["trained"] == ["4" + END] and shown["rejected"]["trained"] == ["5" + END]
    assert "2+2?" in shown["rendered"] and "2+2?" in shown["rejected"]["rendered"], "both answers follow the prompt"


def test_unpaired_answers_train_with_kto_and_keep_their_labels(tmp_path, tokenizer):
    records = [{"prompt": f"{i}+{i}?", "completion": str(2 * i + (i % 2)), "label": i % 2 == 0} for i in range(6)]
    path = write_jsonl(tmp_path / "kto.jsonl", records)
    report = check(path, tokenizer)
    assert (report["ok"], report["format"], report["objective"]) == (True, "unpaired", "kto")
    assert report["shown"][0]["trained"] == ["0" + END] and report["shown"][0]["label"] is True
    prepare(path, tmp_path / "out", tokenizer, None, 512)
    meta = load_meta(tmp_path / "out")
    assert (meta["form"], meta["sequences_per_example"], meta["examples"]) == ("unpaired", 2, 6)
    assert np.load(tmp_path / "out" / LABELS).tolist() == [1, 0, 1, 0, 1, 0]


def test_llama_factory_ranking_and_kto_demo_files(tokenizer):
    ranking = check(FIXTURES / "dpo_en_demo.json", tokenizer)
    assert (ranking["ok"], ranking["format"], ranking["objective"], ranking["kept"]) == (True, "preference", "dpo", 2)
    kto = check(FIXTURES / "kto_en_demo.json", tokenizer)
    assert (kto["ok"], kto["format"], kto["objective"], kto["kept"]) == (True, "unpaired", "kto", 2), kto
    first = kto["shown"][0]
    assert first["trained"] and "label" in first, "the judged answer is the conversation's last assistant turn"


@pytest.mark.parametrize("name", ["ultrafeedback_binarized.jsonl", "ultrafeedback_cleaned.jsonl"])
def test_a_string_prompt_beside_whole_conversations_takes_their_shared_start(tokenizer, name):
    """UltraFeedback (H4's binarized, argilla's cleaned): `prompt` is the user's text, and `chosen`/`rejected`
    repeat it as their first turn. The shared start is the prompt (TRL's maybe_extract_prompt), rendered once."""
    report = check(FIXTURES / name, tokenizer)
    assert (report["ok"], report["format"], report["objective"], report["kept"]) == (True, "preference", "dpo", 2), \
        report
    first = report["shown"][0]
    answer = [m["content"] for m in json.loads((FIXTURES / name).read_text().splitlines()[0])["chosen"]][-1]
    assert first["trained"] == [answer + END], "only the answer trains, never the repeated user turn"
    question = json.loads((FIXTURES / name).read_text().splitlines()[0])["prompt"]
    assert first["rendered"].count(question) == 1, "the prompt is rendered once, as the user turn"


def test_a_string_prompt_that_disagrees_with_the_conversations_is_refused_naming_both(tmp_path, tokenizer):
    record = {"prompt": "What is 2+2?", "chosen": [*PROMPT, {"role": "assistant", "content": "4"}],
              "rejected": [*PROMPT, {"role": "assistant", "content": "5"}]}
    report = check(write_jsonl(tmp_path / "pairs.jsonl", [record]), tokenizer)
    assert not report["ok"]
    (problem,) = report["problems"]
    assert problem["kind"] == "prompt_mismatch"
    assert "'What is 2+2?'" in problem["message"] and "'2+2?'" in problem["message"]


def test_a_pair_too_long_for_max_seq_len_is_dropped_as_a_pair(tmp_path, tokenizer):
    long = {"prompt": "2+2?", "chosen": "4", "rejected": "five " * 200}
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR_SHAPES["trl-standard"]] * 4 + [long])
    summary = prepare(path, tmp_path / "out", tokenizer, DataSettings(), 128)
    assert (summary.examples, summary.dropped_overlong) == (4, 1)
    offsets = np.load(tmp_path / "out" / "offsets.npy")
    assert len(offsets) - 1 == 8, "two sequences an example, side by side"
