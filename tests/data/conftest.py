"""Fixtures for the data pipeline tests: the real SmolLM2 tokenizer and settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from data_helpers import DATASETS

from finetuned.config import DataSettings


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:tiny (2-layer Llama, SmolLM2's tokenizer), built once per user and linked in."""
    from finetuned.models.builtin import materialize

    return materialize("builtin:tiny", tmp_path_factory.mktemp("models") / "base")


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture
def settings() -> Callable[..., DataSettings]:
    """Build settings with overrides: settings(train_on_prompt=True)."""
    return lambda **overrides: DataSettings(**overrides)


@pytest.fixture
def datasets() -> Path:
    assert (DATASETS / "alpaca_en_demo.json").is_file(), f"the test data is missing from {DATASETS}"
    return DATASETS


@pytest.fixture(scope="session")
def prepared_for_properties(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """45 short chat examples, prepared once for the property tests on JobData."""
    from data_helpers import chat, write_jsonl

    from finetuned.data import prepare

    root = tmp_path_factory.mktemp("properties")
    records = [chat(("user", "q " * (i % 11)), ("assistant", f"a{i} " * (i % 4 + 1))) for i in range(45)]
    prepare(write_jsonl(root / "data.jsonl", records), root / "out", tokenizer, None, 128)
    return root / "out"
