"""The Ollama route: a Modelfile beside the GGUF whose TEMPLATE renders a conversation as training did.

Ollama's templates are Go templates, and a Jinja chat template cannot be translated
in general. Instead the training template is recognised: probe conversations are
rendered with it and compared with what each known family's Go template gives under
Ollama's rules (`.System` is the conversation's system messages joined by a blank
line, else the Modelfile's SYSTEM; `.Messages` are all its messages, in order). The
family's Go template is then written out. A system prompt the Jinja template adds by
itself when a conversation has none (SmolLM2's) becomes the Modelfile's SYSTEM. Any
other template is refused: a Modelfile that prompts the model differently from its
training is worse than none.

The Go templates use no white-space trimming (`{{-`): every character between the
actions is literal text, so what they render is exactly the strings below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from finetuned.lifecycle.errors import LifecycleError

Messages = Sequence[dict[str, str]]
EOS = "{eos}"  # in a family's strings: the tokenizer's end-of-sequence token
GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class Family:
    """A chat template's shape: the text around each role's content, and what opens the answer."""

    name: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    stops: tuple[str, ...]
    # The Jinja template writes the BOS token first; Ollama's tokenizer adds it itself (the GGUF's add_bos_token).
    bos: bool = False

    def _text(self, text: str, eos: str) -> str:
        return text.replace(EOS, eos)

    def render(self, messages: Messages, default_system: str, eos: str) -> str:
        """What the family's Go template gives for `messages` and an answer to come, under Ollama's rules."""
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or default_system
        out = f"{self.system[0]}{system}{self.system[1]}" if system else ""
        for message in messages:
            turn = {"user": self.user, "assistant": self.assistant}.get(message["role"])
            if turn is not None:
                out += turn[0] + message["content"] + turn[1]
        return self._text(out + self.generation, eos)

    def go_template(self, eos: str) -> str:
        """The Ollama TEMPLATE: the same text as `render`, as a Go template."""
        parts = ["{{ if .System }}", self.system[0], "{{ .System }}", self.system[1], "{{ end }}",
                 "{{ range .Messages }}",
                 '{{ if eq .Role "user" }}', self.user[0], "{{ .Content }}", self.user[1],
                 '{{ else if eq .Role "assistant" }}', self.assistant[0], "{{ .Content }}", self.assistant[1],
                 "{{ end }}{{ end }}", self.generation]
        return self._text("".join(parts), eos)

    def default_system(self, rendered: str) -> str:
        """The system prompt a template added to a conversation that had none ('' if it added none)."""
        start, end = self.system
        if not rendered.startswith(start) or end not in rendered[len(start):]:
            return ""
        return rendered[len(start):rendered.index(end, len(start))]


CHATML = Family("ChatML", system=("<|im_start|>system\n", "<|im_end|>\n"), user=("<|im_start|>user\n", "<|im_end|>\n"),
                assistant=("<|im_start|>assistant\n", "<|im_end|>\n"), generation="<|im_start|>assistant\n",
                stops=("<|im_start|>", "<|im_end|>"))
LLAMA3 = Family("Llama 3", system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
                user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
                assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
                generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
                stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), bos=True)
# finetuned's FALLBACK_TEMPLATE (data/masking.py), for tokenizers that have none.
PLAIN = Family("finetuned's plain '### Role:' template", system=("### System:\n", "\n\n"),
               user=("### User:\n", "\n\n"), assistant=("### Assistant:\n", EOS + "\n\n"),
               generation="### Assistant:\n", stops=(EOS, "### User:"))
FAMILIES = (CHATML, LLAMA3, PLAIN)

# Contents without surrounding white space: Llama 3's template trims contents, Ollama's cannot.
_S = {"role": "system", "content": "You answer in one short sentence."}
_U1 = {"role": "user", "content": "What is the capital of France?"}
_A1 = {"role": "assistant", "content": "Paris.\nIt is also its largest city."}
_U2 = {"role": "user", "content": "And of Italy?"}
_A2 = {"role": "assistant", "content": "Rome."}
_U3 = {"role": "user", "content": "Thanks: list both, one per line."}
PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    (_U1,), (_S, _U1), (_U1, _A1, _U2), (_S, _U1, _A1, _U2), (_U1, _A1, _U2, _A2, _U3), (_S, _U1, _A1, _U2, _A2, _U3),
)


@dataclass(frozen=True)
class Match:
    family: Family
    system: str  # the Modelfile's SYSTEM: what the template adds when a conversation has no system message


def recognise(render: Callable[[Messages], str], bos: str, eos: str) -> Match:
    """The family whose Go template renders every probe as `render` (the Jinja template, answer prompt on) does."""
    def jinja(messages: Messages) -> str | None:
        try:
            return render(messages)
        except Exception:  # raise_exception() in a template that refuses a probe: not this family
            return None

    rendered = [jinja(probe) for probe in PROBES]
    for family in FAMILIES:
        lead = bos if family.bos else ""
        first = rendered[0] or ""
        default = family.default_system(first[len(lead):] if first.startswith(lead) else first)
        if all(text == lead + family.render(probe, default, eos) for probe, text in zip(PROBES, rendered, strict=True)):
            return Match(family, default)
    known = ", ".join(f.name for f in FAMILIES)
    raise LifecycleError(f"the chat template it was trained with is none of the families an Ollama Modelfile is "
                         f"written for ({known}); export --format gguf instead (the template is inside it, as "
                         "tokenizer.chat_template) and write the Modelfile's TEMPLATE by hand")


def _quoted(value: str) -> str:
    if '"""' in value:
        raise LifecycleError(f"cannot write {value!r} in a Modelfile: it holds three double quotes")
    return f'"""{value}"""'


def modelfile(match: Match, eos: str, note: str) -> str:
    """The Modelfile: FROM the GGUF beside it, the TEMPLATE, the SYSTEM prompt if any, the stop strings."""
    lines = [f"# {note}", f"# Chat template: {match.family.name}, as the model was trained.",
             f"FROM ./{GGUF_FILE}", f"TEMPLATE {_quoted(match.family.go_template(eos))}"]
    if match.system:
        lines.append(f"SYSTEM {_quoted(match.system)}")
    for stop in dict.fromkeys(s.replace(EOS, eos) for s in match.family.stops):
        if stop and '"' not in stop and "\n" not in stop:  # an EOS token that cannot be quoted is left to the GGUF
            lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
