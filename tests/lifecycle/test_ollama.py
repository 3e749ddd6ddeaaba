"""The Modelfile's TEMPLATE renders conversations exactly as the Jinja template training used, or is refused.

The Go side is rendered by tests/lifecycle/gotemplate.py under Ollama's rules; that renderer is itself
checked against expected strings from Ollama's own template tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gotemplate import modelfile_fields, ollama_prompt, render
from transformers import AutoTokenizer

from finetuned.data.masking import FALLBACK_TEMPLATE
from finetuned.lifecycle import ollama
from finetuned.lifecycle.errors import LifecycleError

TEMPLATES = Path(__file__).parent.parent / "fixtures" / "templates"

# Conversations beyond the probes recognition uses: other contents, Jinja-looking text, long ones.
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be terse.\nNo lists."}, {"role": "user", "content": "Name a {{ colour }}."}],
    [{"role": "user", "content": "Write 2+2."}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Now in words, please (unicode: é, 日本)."}],
    [{"role": "system", "content": "S"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(7)],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _jinja(tokenizer, template: str):
    def render_jinja(messages) -> str:
        return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    return render_jinja


def _modelfile_for(tokenizer, template: str) -> tuple[ollama.Match, str]:
    match = ollama.recognise(_jinja(tokenizer, template), tokenizer.bos_token, tokenizer.eos_token)
    return match, ollama.modelfile(match, tokenizer.eos_token, "test")


@pytest.mark.parametrize(("name", "family", "system"), [
    ("smollm2", "ChatML", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ("qwen3.jinja", "ChatML", ""),
    ("llama3.jinja", "Llama 3", ""),
    ("fallback", ollama.PLAIN.name, ""),
])
def test_modelfile_template_renders_every_conversation_as_the_training_template(tokenizer, name, family, system):
    template = {"smollm2": tokenizer.chat_template, "fallback": FALLBACK_TEMPLATE}.get(name) or \
        (TEMPLATES / name).read_text(encoding="utf-8")
    match, text = _modelfile_for(tokenizer, template)
    assert (match.family.name, match.system) == (family, system)
    fields = modelfile_fields(text)
    assert fields["FROM"] == "./model.gguf" and (fields["SYSTEM"] or "") == system
    assert fields["stop"] and all(stop in text for stop in fields["stop"])
    # Llama 3's Jinja writes BOS itself; Ollama's tokenizer adds it (the GGUF's add_bos_token).
    lead = tokenizer.bos_token if match.family.bos else ""
    for messages in [*map(list, ollama.PROBES), *CONVERSATIONS]:
        assert lead + ollama_prompt(text, messages) == _jinja(tokenizer, template)(messages), messages


def test_an_unknown_template_is_refused_by_name(tokenizer):
    gemma_like = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
                  "{{ raise_exception('System role not supported') }}{% endif %}<start_of_turn>"
                  "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    with pytest.raises(LifecycleError, match=r"none of the families .*ChatML, Llama 3.*--format gguf"):
        _modelfile_for(tokenizer, gemma_like)
    # One character off the plain template (a space before the content) is not the plain template.
    with pytest.raises(LifecycleError, match="none of the families"):
        _modelfile_for(tokenizer, FALLBACK_TEMPLATE.replace(":\\n' ~", ":\\n ' ~"))


def test_the_go_renderer_agrees_with_ollamas_own_expected_strings():
    """Cases of ollama/template/template_test.go (TestExecuteWithMessages): trim markers, else if, .System."""
    template = ('[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n'
                '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}'
                "[INST] {{ end }}\n{{- end }}")
    messages = [{"Role": "user", "Content": "Hello friend!"}, {"Role": "assistant", "Content": "Hello human!"},
                {"Role": "user", "Content": "What is your name?"}]
    assert render(template, {"System": "", "Messages": messages}) == \
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    system = [{"Role": "system", "Content": "You are a helpful assistant!"}, *messages]
    assert render(template, {"System": "You are a helpful assistant!", "Messages": system}) == \
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "
    with pytest.raises(ValueError, match="unsupported"):
        render("{{ with .Tools }}{{ . }}{{ end }}", {})
