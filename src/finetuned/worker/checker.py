"""The model checker process: can the workspace's settings train? Asked at start-up and after each change.

It runs `models/check.py` (which imports torch and transformers, so not in the daemon),
answers each `CheckModel` with a `ModelChecked`, and exits when told or when the daemon
goes. A child program (processes/child.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from finetuned.processes.protocol import CheckModel, ModelChecked

if TYPE_CHECKING:
    from finetuned.processes.link import Link
    from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.checker")


def serve(ws: Workspace, link: Link) -> None:
    from finetuned.models.check import check_base_model
    from finetuned.models.loading import ModelError

    for order in link.orders(CheckModel):
        try:
            checked = check_base_model(order.config, ws)
            link.send(ModelChecked(key=order.key, error=None, summary=checked.summary))
        except ModelError as exc:
            link.send(ModelChecked(key=order.key, error=str(exc)))
        except Exception as exc:  # a check that crashes says so, in one line; the daemon holds on it
            log.exception("checking the base model crashed")
            link.send(ModelChecked(key=order.key, error=f"checking the base model failed: {type(exc).__name__}: "
                                                       f"{str(exc).splitlines()[0] if str(exc) else ''}"))
