"""Our preference losses equal TRL's on the same batch and weights (float32, CPU, to 1e-5; in bf16, to 1e-3).

TRL (1.16) builds and collates the batch; the same token ids and completion masks become one of
our batches, and our objective's loss is compared with `trainer.compute_loss`. The models are
tiny random Llamas with a word-level tokenizer made here: nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finetuned.config import PreferenceSettings
from finetuned.data.batches import IGNORE, Batch, PreferenceBatch
from finetuned.models.precision import autocast
from finetuned.worker.loss import sequence_logps
from finetuned.worker.objectives import DPO, KTO, ORPO, SimPO

os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRL_EXPERIMENTAL_SILENCE="1")
trl = pytest.importorskip("trl", reason="TRL is a test extra (pip install -e '.[test]', Python 3.11+)")

WORDS = [
    "the", "sky", "is", "blue", "green", "red", "sun", "in", "sea", "a", "b", "c",
    "d", "e", "f", "g", "what", "color", "?", ".", "hello", "world", "yes", "no",
]
PAIRS = [
    {"prompt": "what color is the sky ?", "chosen": " the sky is blue .", "rejected": " the sky is green ."},
    {"prompt": "hello", "chosen": " hello world", "rejected": " no no no no"},
    {"prompt": "a b c", "chosen": " d e f g", "rejected": " d"},
]
LABELLED = [
    {"prompt": "what color is the sky ?", "completion": " blue .", "label": True},
    {"prompt": "hello", "completion": " no no", "label": False},
    {"prompt": "a b c", "completion": " d e f", "label": True},
    {"prompt": "the sun is", "completion": " in the sea .", "label": False},
]


def tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def model(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config).float()


def ours(input_ids: torch.Tensor, attention: torch.Tensor, trained: torch.Tensor) -> Batch:
    """TRL's rows as one of our padded batches: labels where TRL scores, each row its own sequence."""
    rows = torch.arange(len(input_ids))[:, None].expand_as(input_ids)
    return Batch(input_ids=input_ids, labels=torch.where(trained.bool(), input_ids, IGNORE),
                 attention_mask=attention, position_ids=None, n_loss_tokens=int(trained.sum()),
                 n_tokens=int(attention.sum()), n_examples=len(input_ids),
                 sequence_ids=torch.where(attention.bool(), rows, -1), n_sequences=len(input_ids))


def pairs_batch(policy: Batch, n: int) -> PreferenceBatch:
    """Rows 0..n-1 chosen, n..2n-1 rejected (TRL's order)."""
    return PreferenceBatch(policy, np.tile(np.arange(n), 2), np.repeat([0, 1], n), n)


@pytest.fixture
def args(tmp_path: Path) -> dict[str, Any]:
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path / "datasets")
    return dict(output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, gradient_checkpointing=False,
                report_to="none")


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_equals_trl(args, beta):
    from datasets import Dataset

    policy, ref = model(0), model(1)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, train_dataset=Dataset.from_list(PAIRS),
                             processing_class=tokenizer(),
                             args=trl.DPOConfig(per_device_train_batch_size=3, beta=beta, max_length=None, **args))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    expected = float(trainer.compute_loss(trainer.model, batch))
    mine = ours(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        reference = sequence_logps(ref, mine)[0].reshape(2, 3).T.numpy()  # [example, slot]
    loss, metrics = DPO(PreferenceSettings(beta=beta), reference).loss(policy, pairs_batch(mine, 3))
    assert float(loss) / 3 == pytest.approx(expected, abs=1e-5)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        value, count = metrics[name]
        assert float(value) / count == pytest.approx(trl_metrics[name], abs=1e-4), name


def _kto_against_trl(args: dict[str, Any], precision: str) -> tuple[float, Any, dict[str, Any], Any]:
    """TRL's KTO loss on a batch of its own collator (fp32), and ours on the same batch in `precision`:
    (TRL's loss, our loss sum, our metrics, the trainer)."""
    from datasets import Dataset

    policy, ref = model(0), model(1)
    settings = PreferenceSettings(beta=0.1, kto_desirable_weight=1.0, kto_undesirable_weight=1.5)
    trainer = trl.KTOTrainer(model=policy, ref_model=ref, train_dataset=Dataset.from_list(LABELLED),
                             processing_class=tokenizer(),
                             args=trl.KTOConfig(per_device_train_batch_size=4, beta=0.1, desirable_weight=1.0,
                                                undesirable_weight=1.5, **args))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    expected = float(trainer.compute_loss(trainer.model, batch))
    answers = ours(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mismatched = ours(batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    cpu = torch.device("cpu")
    with torch.no_grad(), autocast(cpu, precision):
        reference = np.stack([sequence_logps(ref, answers)[0].float().numpy(),
                              sequence_logps(ref, mismatched)[0].float().numpy()], 1)
    labelled = PreferenceBatch(answers, np.arange(4), np.zeros(4, dtype=np.int64), 4,
                               desirable=batch["label"].bool().numpy(), kl=mismatched)
    with autocast(cpu, precision):
        loss, metrics = KTO(settings, reference).loss(policy, labelled)
    return expected, loss, metrics, trainer


def test_kto_equals_trl(args):
    expected, loss, metrics, trainer = _kto_against_trl(args, "fp32")
    assert float(loss) / 4 == pytest.approx(expected, abs=1e-5)
    assert float(metrics["kl"][0]) / 4 == pytest.approx(trainer._metrics["train"]["kl"][-1], abs=1e-5)


def _concatenated(trainer: Any, batch: dict[str, Any]) -> tuple[Batch, int]:
    cat = trainer.concatenated_inputs(batch, padding_value=0)
    ids, attention, labels = (cat[k] for k in ("concatenated_input_ids", "concatenated_attention_mask",
                                               "concatenated_labels"))
    return ours(ids, attention, labels != IGNORE), len(ids) // 2


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (2.5, 1.4)])
def test_simpo_equals_trl(args, beta, gamma):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    policy = model(0)
    trainer = CPOTrainer(model=policy, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer(),
                         args=CPOConfig(loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma,
                                        per_device_train_batch_size=3, remove_unused_columns=False, **args))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    expected = float(trainer.compute_loss(trainer.model, batch))
    mine, n = _concatenated(trainer, batch)
    loss, _ = SimPO(PreferenceSettings(beta=beta, simpo_gamma=gamma)).loss(policy, pairs_batch(mine, n))
    assert float(loss) / n == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_equals_trl(args, lam):
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    policy = model(0)
    trainer = ORPOTrainer(model=policy, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer(),
                          args=ORPOConfig(beta=lam, per_device_train_batch_size=3, remove_unused_columns=False, **args))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    expected = float(trainer.compute_loss(trainer.model, batch))
    mine, n = _concatenated(trainer, batch)
    loss, metrics = ORPO(PreferenceSettings(orpo_lambda=lam)).loss(policy, pairs_batch(mine, n))
    assert float(loss) / n == pytest.approx(expected, abs=1e-5)
    assert float(metrics["nll_loss"][0]) / n == pytest.approx(trainer._stored_metrics["train"]["nll_loss"][-1],
                                                              abs=1e-5)


def test_sft_weight_adds_each_chosen_answers_mean_nll(args):
    """LLaMA-Factory's pref_ftx: loss_i += w · (-logp(chosen_i) / its tokens)."""
    from datasets import Dataset

    policy, ref = model(0), model(1)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, train_dataset=Dataset.from_list(PAIRS),
                             processing_class=tokenizer(),
                             args=trl.DPOConfig(per_device_train_batch_size=3, max_length=None, **args))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    mine = ours(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        reference = sequence_logps(ref, mine)[0].reshape(2, 3).T.numpy()
        sums, counts = sequence_logps(policy, mine)
        plain, _ = DPO(PreferenceSettings(), reference).loss(policy, pairs_batch(mine, 3))
        weighted, _ = DPO(PreferenceSettings(sft_weight=0.5), reference).loss(policy, pairs_batch(mine, 3))
    assert float(weighted - plain) == pytest.approx(float((0.5 * -sums[:3] / counts[:3]).sum()), abs=1e-5)


# bf16 autocast rounds each matmul's inputs to 8 bits of mantissa. On these tiny models DPO moved 3e-6 from TRL's
# float32 loss (about 0.7); 1e-3 leaves room for other bf16 kernels (AMX, a GPU).
BF16_TOLERANCE = 1e-3


def test_dpo_in_bf16_stays_within_its_tolerance_of_trl_in_fp32(args):
    """As the recipe runs it with training.precision bf16: reference and policy passes under autocast."""
    from datasets import Dataset

    policy, ref = model(0), model(1)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, train_dataset=Dataset.from_list(PAIRS),
                             processing_class=tokenizer(),
                             args=trl.DPOConfig(per_device_train_batch_size=3, beta=0.5, max_length=None, **args))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    expected = float(trainer.compute_loss(trainer.model, batch))
    mine = ours(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        reference = sequence_logps(ref, mine)[0].reshape(2, 3).T.float().numpy()
    with autocast(torch.device("cpu"), "bf16"):
        loss, _ = DPO(PreferenceSettings(beta=0.5), reference).loss(policy, pairs_batch(mine, 3))
    assert loss.dtype == torch.float32
    assert float(loss) / 3 != expected, "bf16 must really have run"
    assert float(loss) / 3 == pytest.approx(expected, abs=BF16_TOLERANCE)


def test_kto_in_bf16_stays_within_its_tolerance_of_trl_in_fp32(args):
    expected, loss, _, _ = _kto_against_trl(args, "bf16")
    assert float(loss) / 4 == pytest.approx(expected, abs=BF16_TOLERANCE)
