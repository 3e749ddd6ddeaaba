"""Render examples to text with the model's chat template, and say which characters carry loss.

The policy, in one place:
- chat-like records: the content of every assistant turn plus the end-of-turn
  marker that closes it (`<|im_end|>` for SmolLM2), so the model learns to stop;
  never the role headers, system, user or tool turns. The data may say otherwise
  per turn (`Message.train`: OpenAI `weight`, Axolotl `train`, LLaMA-Factory
  `loss_weight`): an assistant turn marked 0 is not trained, another turn
  marked 1 has its content trained;
- a tool call turn: the calls as the template renders them (`<tool_call>...`),
  from the assistant header on, and the end-of-turn marker; tool results never;
- `train_on_prompt`: every token;
- text: every token, with EOS appended so a document ends.

Spans are character ranges in the rendered text; `token_mask` maps them onto
the tokens of the fast tokenizer through its offsets. The mask is built from
the text's structure, never from `input_ids == pad_token_id`: SmolLM2's pad
token is its end-of-turn token, and hiding it would teach the model never to stop.

Speed: rendering every prefix of every conversation costs one template call
per turn. Instead each role sequence (say system, user, assistant) is rendered
once with placeholder contents into a skeleton of literal chunks; an example's
spans then come from the lengths of its contents, checked by comparing the
filled skeleton with the real rendering. Templates that rewrite content
(trimming, reasoning blocks) fail that check and take the slow, exact path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetuned.data.chat import Chat, Message
from finetuned.data.report import RecordProblem
from finetuned.data.tools import fallback, template_message
from finetuned.data.toolspans import common_prefix, sentinel, template_tool_support, tool_chat_spans, turn_marks

log = logging.getLogger(__name__)

Span = tuple[int, int]

# For models without a chat template. Documented in docs/data.md; the EOS after
# each answer is what teaches the model to stop.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' ~ (message['role'] | capitalize) ~ ':\\n' ~ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token or '' }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

_MAX_SKELETONS = 4096  # distinct role sequences remembered


def training_template(tokenizer: Any) -> str:
    """The chat template training renders with: the tokenizer's own, else FALLBACK_TEMPLATE.

    Adapters and exports carry this one, so a model is prompted as it was trained.
    """
    return getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> str:
    """A conversation as the model reads it before answering: rendered with `training_template`, ending
    with the assistant's header. Evaluation, `finetuned chat` and the monitor's asks all start here, so
    none can drift from training."""
    return tokenizer.apply_chat_template(list(messages), chat_template=training_template(tokenizer), tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The tokens of `render_prompt`, tokenised as training tokenises its text (no special tokens added)."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def trained_turns(messages: Sequence[Message]) -> list[int]:
    """The turns that carry loss: assistant turns, unless the data says otherwise per turn."""
    return [i for i, m in enumerate(messages) if m.train or (m.train is None and m.role == "assistant")]


@dataclass(frozen=True, slots=True)
class _Skeleton:
    chunks: tuple[str, ...]  # literal text around the n contents: n + 1 pieces
    closings: dict[int, str]  # assistant turn index -> its end-of-turn text, which is trained

    def fill(self, messages: Sequence[Message], text: str, trained: Sequence[int]) -> list[Span] | None:
        pieces = [self.chunks[0]]
        spans = []
        pos = len(self.chunks[0])
        for i, m in enumerate(messages):
            start, pos = pos, pos + len(m.content)
            if i in trained:
                spans.append((start, pos + len(self.closings.get(i, ""))))
            pieces += (m.content, self.chunks[i + 1])
            pos += len(self.chunks[i + 1])
        return spans if "".join(pieces) == text else None


class ChatRenderer:
    """Text and trained character spans of one example, for one tokenizer and policy."""

    def __init__(self, tokenizer: Any, *, train_on_prompt: bool) -> None:
        self.tokenizer = tokenizer
        self.train_on_prompt = train_on_prompt
        self.fallback = not getattr(tokenizer, "chat_template", None)
        if self.fallback:
            log.info("the tokenizer has no chat template: using the plain '### Role:' template")
        self.eos = tokenizer.eos_token or ""
        self._skeletons: dict[tuple[str, ...], _Skeleton | None] = {}
        self._direct = self._direct_render()
        # Content that spells a special token ("<|im_end|>") is tokenised as that token, as
        # Hugging Face does: counted, so a job's summary can say so (it may end turns early).
        specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.special_token_text = 0  # examples whose content holds one
        self.special_token_seen: str | None = None  # the first one found, for the warning
        self.marks = turn_marks(self._apply)
        self.tools_native, self.tool_role = template_tool_support(self._apply)
        self.tools_fallback = 0  # examples with tools rendered through the fallback, for the job's warning

    def _apply(self, messages: list[dict[str, Any]], generation_prompt: bool = False,
               tools: list[dict[str, Any]] | None = None) -> str:
        if self._direct is not None and not tools:
            return self._direct(messages, generation_prompt)
        return self._apply_slow(messages, generation_prompt, tools)

    def _apply_slow(self, messages: list[dict[str, Any]], generation_prompt: bool = False,
                    tools: list[dict[str, Any]] | None = None) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            chat_template=FALLBACK_TEMPLATE if self.fallback else None,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    def _direct_render(self) -> Callable[[list[dict[str, str]], bool], str] | None:
        """The compiled template called directly, when it renders exactly as apply_chat_template.

        apply_chat_template spends two thirds of its time copying and checking its
        input, which plain role/content dicts do not need: this is 2-3x faster per
        record. The compiler is transformers' own (cached, same environment and
        filters); probes with awkward content must render identically, else (or
        if a transformers release moves the compiler) the public call is used.
        """
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            source = FALLBACK_TEMPLATE if self.fallback else self.tokenizer.get_chat_template()
            template = _compile_jinja_template(source)
        except Exception:
            return None
        kwargs = dict(self.tokenizer.special_tokens_map)

        def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
            return template.render(messages=messages, add_generation_prompt=generation_prompt, **kwargs)

        awkward = ["  padded  ", "line\nbreaks\n\n", "{{ braces }} {% raw %}", "日本語 é \t", ""]
        probe = [{"role": "system", "content": awkward[0]}]
        for i, text in enumerate(awkward):
            probe += [{"role": "user", "content": text}, {"role": "assistant", "content": awkward[-1 - i]}]
        try:
            for messages in (probe, probe[1:3], probe[1:4]):
                for generation_prompt in (False, True):
                    if render(messages, generation_prompt) != self._apply_slow(messages, generation_prompt):
                        return None
        except Exception:
            return None  # a template that refuses the probe: records take the public path
        return render

    def _count_special(self, contents: Sequence[str]) -> None:
        found = self._special.search("\n".join(contents)) if self._special is not None else None
        if found:
            self.special_token_text += 1
            self.special_token_seen = self.special_token_seen or found.group()

    def render_text(self, text: str) -> tuple[str, list[Span]]:
        self._count_special((text,))
        full = text + self.eos
        return full, [(0, len(full))]

    def render_chat(self, chat: Chat) -> tuple[str, list[Span]]:
        unrendered = chat.calls_tools and not self.tools_native
        if unrendered or (not self.tool_role and any(m.role == "tool" for m in chat.messages)):
            chat = fallback(chat, self.tool_role)
            self.tools_fallback += unrendered
        messages = chat.messages
        dicts = [template_message(m) for m in messages]
        tools = [dict(t) for t in chat.tools] or None
        self._count_special([m.content for m in messages])
        try:
            text = self._apply(dicts, tools=tools)
        except Exception as exc:  # jinja raise_exception() in a template: the record, not the file
            raise RecordProblem("template_error", f"the chat template refused this record: {exc}") from None
        if self.train_on_prompt:
            return text, [(0, len(text))]
        trained = trained_turns(messages)
        if chat.structured:  # calls and tools shape the rendering: the record is its own skeleton
            return text, tool_chat_spans(self._apply, dicts, tools, text, trained, self.marks)
        skeleton = self._skeleton(tuple(m.role for m in messages))
        spans = skeleton.fill(messages, text, trained) if skeleton is not None else None
        return text, spans if spans is not None else self._spans_by_prefix(dicts, text, trained)

    def _skeleton(self, roles: tuple[str, ...]) -> _Skeleton | None:
        if roles in self._skeletons:
            return self._skeletons[roles]
        if len(self._skeletons) >= _MAX_SKELETONS:
            self._skeletons.clear()
        skeleton = self._skeletons[roles] = self._build_skeleton(roles)
        return skeleton

    def _build_skeleton(self, roles: tuple[str, ...]) -> _Skeleton | None:
        dicts = [{"role": r, "content": sentinel(i)} for i, r in enumerate(roles)]
        try:
            full = self._apply(dicts)
        except Exception:  # a template may refuse some role orders: the exact path reports it per record
            return None
        chunks, pos = [], 0
        for i in range(len(roles)):
            mark = sentinel(i)
            at = full.find(mark, pos)
            if at < 0 or full.count(mark) != 1:
                return None  # the template drops or repeats content: only the exact path can follow it
            chunks.append(full[pos:at])
            pos = at + len(mark)
        chunks.append(full[pos:])
        closings = {}
        for i, role in enumerate(roles):
            if role != "assistant":
                continue
            # What the template writes right after this answer when it is the last turn
            # and also when more follows: their common start is the end-of-turn marker.
            try:
                tail = self._apply(dicts[: i + 1]).split(sentinel(i), 1)[1]
            except Exception:  # a template that refuses to end on this turn: train the content alone
                tail = ""
            closings[i] = common_prefix(tail, chunks[i + 1]).rstrip()
        return _Skeleton(tuple(chunks), closings)

    def _spans_by_prefix(self, dicts: list[dict[str, Any]], text: str, trained: Sequence[int]) -> list[Span]:
        """Exact spans from renderings of each prefix: an answer starts where its placeholder would."""
        spans = []
        mark = sentinel(0)
        for i in trained:
            d = dicts[i]
            if d["role"] != "assistant":  # another turn the data asks to train: its content alone
                found = text.find(d["content"], spans[-1][1] if spans else 0)
                if found >= 0 and d["content"]:
                    spans.append((found, found + len(d["content"])))
                continue
            try:
                probe = self._apply([*dicts[:i], {"role": "assistant", "content": mark}])
                upto = self._apply(dicts[: i + 1])
            except Exception:  # refused prefixes fail the consistency check below
                probe = upto = ""
            start = probe.find(mark)
            if start < 0 or not text.startswith(probe[:start]) or not text.startswith(upto):
                raise RecordProblem(
                    "template_error",
                    "the chat template renders an earlier turn differently once later turns follow, "
                    "so its answers cannot be located for the loss mask",
                )
            if d["content"].strip():
                # The template may put text before the content (a reasoning block): skip to it.
                found = text.find(d["content"].strip(), start, len(upto))
                start = found if found >= 0 else start
            spans.append((start, start + len(text[start : len(upto)].rstrip())))
        return spans


def token_mask(encoding: Any, spans: Sequence[Span]) -> np.ndarray:
    """uint8 per token: 1 where the token starts inside a trained span.

    A token that straddles a span's start (a newline merged with leading spaces
    of the answer) begins in the prompt and stays untrained: loss never leaks
    onto prompt text.
    """
    n = len(encoding.ids)
    mask = np.zeros(n, dtype=np.uint8)
    for a, b in spans:
        if b <= a:
            continue
        first, last = encoding.char_to_token(a), encoding.char_to_token(b - 1)
        if first is None or last is None:
            return _token_mask_by_offsets(encoding, spans)
        if encoding.token_to_chars(first)[0] < a:
            first += 1
        mask[first : last + 1] = 1
    return mask


def _token_mask_by_offsets(encoding: Any, spans: Sequence[Span]) -> np.ndarray:
    # Some characters map to no token (a normaliser dropped them): test every token's start.
    starts = np.fromiter((o[0] for o in encoding.offsets), dtype=np.int64, count=len(encoding.ids))
    mask = np.zeros(len(starts), dtype=bool)
    for a, b in spans:
        mask |= (starts >= a) & (starts < b)
    return mask.astype(np.uint8)
