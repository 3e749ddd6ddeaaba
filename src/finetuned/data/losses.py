"""Examples a job loses on the way to training: counted, warned about, refused past a limit.

A job that trained 7% of its file is not a success: above `LOSS_WARNING` of the
examples dropped or cut (longer than `training.max_seq_len`, no trained token
left, text that spells a special token), the job says so with the counts, the
longest length and the setting to change, in the log, its record and job.json;
above `data.max_dropped_fraction` dropped, the file is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuned.config import DataSettings

LOSS_WARNING = 0.05


@dataclass(frozen=True)
class DataLosses:
    message: str
    count: int
    refused: bool

    def entry(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "message": self.message, "lines": [], "count": self.count}


def data_losses(examples: int, counts: dict[str, int], special: int, max_seq_len: int,
                settings: DataSettings) -> DataLosses | None:
    """What tokenising lost of `examples` good records, when that is worth a warning (or a refusal)."""
    dropped = counts["dropped_overlong"] + counts["dropped_no_loss"]
    affected = dropped + counts["truncated"] + special
    if not examples or (affected / examples <= LOSS_WARNING and dropped / examples <= settings.max_dropped_fraction):
        return None
    parts = []
    if counts["dropped_overlong"]:
        parts.append(f"{counts['dropped_overlong']} dropped as longer than training.max_seq_len {max_seq_len} "
                     f"(the longest has {counts['longest_seen']} tokens: raise training.max_seq_len, or set "
                     "data.overlong to 'truncate')")
    if counts["truncated"]:
        parts.append(f"{counts['truncated']} cut to training.max_seq_len {max_seq_len} (the longest has "
                     f"{counts['longest_seen']} tokens: raise training.max_seq_len to keep them whole)")
    if counts["dropped_no_loss"]:
        parts.append(f"{counts['dropped_no_loss']} dropped with no trained token left (an answer cut off, or "
                     "every turn marked not to train)")
    refused = dropped / examples > settings.max_dropped_fraction
    lost = dropped + counts["truncated"]
    share = 100 * (dropped if refused else lost) / examples
    head = (f"{dropped} of {examples} examples ({share:.0f}%) would be dropped, more than data.max_dropped_fraction "
            f"{settings.max_dropped_fraction:g}" if refused else
            f"{lost} of {examples} examples ({share:.0f}%) are dropped or cut")
    said = [f"{head}: " + "; ".join(parts)] if parts else []
    if special:  # trained whole: never counted as dropped or cut
        said.append(f"{special} of {examples} examples spell a special token in their text, which is tokenised as "
                    "that token (it can end a turn early)")
    return DataLosses("; ".join(said), affected, refused)
