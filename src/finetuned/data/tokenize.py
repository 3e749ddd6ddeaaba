"""Tokenise a validated file into flat arrays on disk, next to the job.

`prepare` streams the file once more (bounded memory), renders each record
into its sequences (examples.py: one, or two for preference data), tokenises
in batches with the fast tokenizer's Rust core, and writes:

    tokens.bin    uint32, every sequence's tokens back to back (an example's sequences adjacent)
    mask.bin      uint8, 1 where the token carries loss
    offsets.npy   int64, n_sequences + 1 start positions into the two arrays
    labels.npy    uint8 per example, unpaired preference data only: 1 for an answer judged good
    meta.json     counts, form, source SHA-256, settings and tokenizer fingerprint

into a temporary folder renamed into place when complete: a crash leaves the
prepared folder whole or absent, never half written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from finetuned.config import DataSettings
from finetuned.data.examples import SFT, UNPAIRED, Example, ahead, form_of, rendered_examples, sequences_per_example
from finetuned.data.losses import data_losses
from finetuned.data.masking import ChatRenderer, Span, token_mask
from finetuned.data.reader import FileReader
from finetuned.data.report import DataError, ProblemLog
from finetuned.data.validate import Validation, validate_file
from finetuned.fsio import publish_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TOKENS, MASK, OFFSETS, META = "tokens.bin", "mask.bin", "offsets.npy", "meta.json"
LABELS = "labels.npy"  # unpaired preference data: uint8 per example, 1 for an answer judged good


@dataclass
class PrepareSummary:
    """What `prepare` wrote; also meta.json's counts (the job summary reports them)."""

    out_dir: str
    source: str
    format: str
    examples: int
    tokens: int
    loss_tokens: int
    dropped_overlong: int
    truncated: int
    dropped_no_loss: int  # examples left with no trained token (an answer cut off by truncation)
    special_token_text: int  # examples whose content spells a special token, tokenised as that token
    skipped_lines: int  # bad lines left out under skip_bad_lines
    longest: int  # tokens in the longest example kept
    longest_seen: int  # tokens in the longest example, kept or not
    sha256: str
    max_seq_len: int
    tokenizer: str
    seconds: float
    notes: list[dict[str, Any]]  # what trains differently than it may seem: warned about, in the job's record

    @property
    def loss_share(self) -> float:
        return self.loss_tokens / self.tokens if self.tokens else 0.0


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Changes whenever the token ids or the rendering of an example could change."""
    h = hashlib.sha256(_backend(tokenizer).to_str().encode())
    for part in (getattr(tokenizer, "chat_template", None), tokenizer.eos_token, tokenizer.bos_token):
        h.update(b"\x00" + json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def prepared_key(tokenizer: Any, settings: DataSettings | None, max_seq_len: int) -> dict[str, Any]:
    """Everything besides the source bytes that decides the prepared arrays."""
    settings = settings or DataSettings()
    return {
        "version": FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_len": max_seq_len,
        "train_on_prompt": settings.train_on_prompt,
        "system_prompt": settings.system_prompt,
        "overlong": settings.overlong,
        "skip_bad_lines": settings.skip_bad_lines,
        "max_dropped_fraction": settings.max_dropped_fraction,
    }


def load_meta(out_dir: Path) -> dict[str, Any] | None:
    """meta.json of a prepared folder, or None when there is none (not prepared, or gone)."""
    try:
        with open(Path(out_dir) / META, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_current(out_dir: Path, sha256: str, tokenizer: Any, settings: DataSettings | None, max_seq_len: int) -> bool:
    """True when `out_dir` already holds this file prepared this way (skip preparing again)."""
    meta = load_meta(out_dir)
    key = prepared_key(tokenizer, settings, max_seq_len)
    return meta is not None and meta.get("sha256") == sha256 and meta.get("key") == key


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; finetuned needs one (offsets)")
    if backend.truncation is not None or backend.padding is not None:
        # A tokenizer configured to truncate or pad would silently cut examples: use a clean copy.
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


class _Writer:
    """Appends sequences to the flat arrays; only the per-sequence lengths (and labels) stay in memory."""

    def __init__(self, tokens: IO[bytes], mask: IO[bytes]) -> None:
        self.tokens, self.mask = tokens, mask
        self.lengths = array("q")
        self.labels = array("B")  # unpaired data: 1 for an answer judged good

    def write(self, ids: list[np.ndarray], masks: list[np.ndarray], labels: list[bool]) -> None:
        if ids:
            self.tokens.write(np.concatenate(ids).tobytes())
            self.mask.write(np.concatenate(masks).tobytes())
            self.lengths.extend(len(x) for x in ids)
        self.labels.extend(int(x) for x in labels)

    def offsets(self) -> np.ndarray:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.frombuffer(self.lengths, dtype=np.int64), out=offsets[1:])
        return offsets


class _Tokenizer:
    """Batches of rendered examples -> token ids and loss masks, with the overlong policy."""

    def __init__(self, tokenizer: Any, max_seq_len: int, overlong: str) -> None:
        self.backend = _backend(tokenizer)
        self.max_seq_len = max_seq_len
        self.overlong = overlong
        self.counts = {
            "dropped_overlong": 0,
            "truncated": 0,
            "dropped_no_loss": 0,
            "tokens": 0,
            "loss_tokens": 0,
            "longest": 0,
            "longest_seen": 0,
        }

    def run(self, batch: list[Example]) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
        """The batch's examples as token ids and masks (their sequences back to back), and their labels.

        An example stands or falls whole: a pair with one answer too long is dropped as a pair.
        """
        texts = [text for example in batch for text, _ in example.sequences]
        encodings = iter(self.backend.encode_batch(texts, add_special_tokens=False))
        ids_out, masks_out, labels = [], [], []
        c = self.counts
        for example in batch:
            encoded = [(enc, spans) for (_text, spans), enc in zip(example.sequences, encodings, strict=False)]
            sequences = [self._sequence(enc, spans) for enc, spans in encoded]
            longest = max(len(ids) for ids, _ in sequences)
            c["longest_seen"] = max(c["longest_seen"], longest)
            if longest > self.max_seq_len:
                if self.overlong == "drop":
                    c["dropped_overlong"] += 1
                    continue
                sequences = [(ids[: self.max_seq_len], mask[: self.max_seq_len]) for ids, mask in sequences]
                c["truncated"] += 1
            # Nothing predicts a sequence's first token (in a packed row the previous
            # one would): it never carries loss, packed or not.
            for _ids, mask in sequences:
                mask[:1] = 0
            if any(not mask.any() for _ids, mask in sequences):
                c["dropped_no_loss"] += 1
                continue
            for ids, mask in sequences:
                c["tokens"] += len(ids)
                c["loss_tokens"] += int(mask.sum())
                c["longest"] = max(c["longest"], len(ids))
                ids_out.append(ids)
                masks_out.append(mask)
            if example.desirable is not None:
                labels.append(example.desirable)
        return ids_out, masks_out, labels

    @staticmethod
    def _sequence(encoding: Any, spans: list[Span]) -> tuple[np.ndarray, np.ndarray]:
        return np.array(encoding.ids, dtype=np.uint32), token_mask(encoding, spans)


def prepare(
    path: Path,
    out_dir: Path,
    tokenizer: Any,
    settings: DataSettings | None,
    max_seq_len: int,
    *,
    validation: Validation | None = None,
) -> PrepareSummary:
    """Tokenise `path` into `out_dir`; raise DataError (with an error report) if it cannot train.

    Pass the `validation` ingestion already made to skip a second validating pass.
    """
    started = time.monotonic()
    path, out_dir = Path(path), Path(out_dir)
    settings = settings or DataSettings()
    if validation is None:
        validation = validate_file(path, settings)
    if not validation.ok:
        raise DataError(validation.error or _report(path, "validation failed"))
    skip = settings.skip_bad_lines
    form = form_of(validation.format)
    worker = _Tokenizer(tokenizer, max_seq_len, settings.overlong)
    problems = ProblemLog()
    reader = FileReader(path, max_line_bytes=settings.max_line_bytes, skip_long_lines=skip)
    # Preference objectives compare the answers' log-probabilities: the prompt never counts.
    renderer = ChatRenderer(tokenizer, train_on_prompt=settings.train_on_prompt and form == SFT)
    batches = ahead(rendered_examples(reader, validation, renderer, settings, problems))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with open(tmp / TOKENS, "wb") as tokens_file, open(tmp / MASK, "wb") as mask_file:
            writer = _Writer(tokens_file, mask_file)
            try:
                for batch in batches:
                    writer.write(*worker.run(batch))
            finally:
                batches.close()
        np.save(tmp / OFFSETS, writer.offsets())
        if form == UNPAIRED:
            np.save(tmp / LABELS, np.frombuffer(writer.labels, dtype=np.uint8))
        examples = len(writer.lengths) // sequences_per_example(form)
        _check(path, validation, reader.sha256, problems, skip, examples, worker.counts, max_seq_len)
        losses = data_losses(validation.examples, worker.counts, renderer.special_token_text, max_seq_len, settings)
        if losses is not None and losses.refused:
            raise DataError(_report(path, losses.message) | {"problems": [losses.entry("data_loss")]})
        summary = PrepareSummary(
            out_dir=str(out_dir),
            source=path.name,
            format=validation.format or "",
            examples=examples,
            skipped_lines=problems.bad_lines,
            sha256=validation.sha256 or "",
            max_seq_len=max_seq_len,
            tokenizer=tokenizer_fingerprint(tokenizer),
            seconds=round(time.monotonic() - started, 3),
            special_token_text=renderer.special_token_text,
            notes=[*validation.notes, *_render_notes(renderer),
                   *([losses.entry("data_loss")] if losses is not None else [])],
            **worker.counts,
        )
        meta = {
            **asdict(summary),
            "form": form,
            "sequences_per_example": sequences_per_example(form),
            "key": prepared_key(tokenizer, settings, max_seq_len),
            "warnings": problems.report(path.name, examples) if problems else None,
        }
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "%s: %d examples, %d tokens (%.0f%% trained) in %.1f s; dropped %d overlong, truncated %d",
        path.name,
        summary.examples,
        summary.tokens,
        100 * summary.loss_share,
        summary.seconds,
        summary.dropped_overlong,
        summary.truncated,
    )
    if summary.special_token_text:
        log.warning(
            "%s: %d examples spell a special token in their text (first seen: %s); it is tokenised as that "
            "token, which can end a turn early", path.name, summary.special_token_text, renderer.special_token_seen)
    for note in summary.notes:
        log.warning("%s: %s", path.name, note["message"])
    return summary


def _render_notes(renderer: ChatRenderer) -> list[dict[str, Any]]:
    if not renderer.tools_fallback:
        return []
    message = (f"the model's chat template does not render tools: for {renderer.tools_fallback} examples the "
               "tools are described in the system turn and each call is written as a JSON line in the assistant "
               "turn (docs/data.md, 'Tools')")
    return [{"kind": "tools_fallback", "message": message, "lines": [], "count": renderer.tools_fallback}]


def _report(path: Path, error: str) -> dict[str, Any]:
    return {"file": path.name, "error": error, "problems": [], "good_lines": 0, "bad_lines": 0}


def _check(
    path: Path,
    validation: Validation,
    sha256: str | None,
    problems: ProblemLog,
    skip: bool,
    examples: int,
    counts: dict[str, int],
    max_seq_len: int,
) -> None:
    """Refuse what cannot train: bad lines (unless skipped), a changed file, no trained token."""
    if problems and not skip:
        raise DataError(problems.report(path.name, examples))
    if sha256 != validation.sha256:
        raise DataError(_report(path, "the file changed after it was validated"))
    if examples and counts["loss_tokens"]:
        return
    why = []
    if counts["dropped_overlong"]:
        why.append(f"{counts['dropped_overlong']} longer than training.max_seq_len {max_seq_len} (the longest has "
                   f"{counts['longest_seen']} tokens: raise training.max_seq_len, or set data.overlong to 'truncate')")
    if counts["dropped_no_loss"]:
        why.append(f"{counts['dropped_no_loss']} with no trained token left")
    message = "no token would carry loss" + (": examples dropped, " + "; ".join(why) if why else "")
    problems.add("no_loss_tokens", message, None, counts_as_line=False)
    raise DataError(problems.report(path.name, 0, error=message))


def _publish(tmp: Path, out_dir: Path) -> None:
    """Put the complete folder in place; an older preparation is replaced, never mixed in."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
    publish_dir(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
