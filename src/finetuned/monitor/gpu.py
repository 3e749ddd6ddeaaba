"""GPU name, memory, utilisation and temperature through NVML, when pynvml is installed.

Never required: without pynvml, without a driver or without a GPU this answers None.
NVML reads the driver's counters without touching any CUDA context, so asking from the
monitor never competes with training for GPU memory (torch would).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "failed": False, "at": 0.0, "value": None}
CACHE_SECONDS = 2.0


def _nvml() -> Any:
    if _state["failed"]:
        return None
    if _state["module"] is None:
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, or an NVMLError of a machine without a driver
            log.debug("no GPU information: %s", exc)
            _state["failed"] = True
            return None
        _state["module"] = pynvml
    return _state["module"]


def _read(nv: Any) -> list[dict[str, Any]]:
    gpus = []
    for index in range(nv.nvmlDeviceGetCount()):
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        name = nv.nvmlDeviceGetName(handle)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        gpu: dict[str, Any] = {
            "index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_used_gb": round(memory.used / 2**30, 2), "memory_total_gb": round(memory.total / 2**30, 2),
        }
        try:
            gpu["utilization_percent"] = nv.nvmlDeviceGetUtilizationRates(handle).gpu
        except nv.NVMLError:
            gpu["utilization_percent"] = None
        try:
            gpu["temperature_c"] = nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
        except nv.NVMLError:
            gpu["temperature_c"] = None
        gpus.append(gpu)
    return gpus


def gpu_info() -> list[dict[str, Any]] | None:
    """One entry per GPU, or None when NVML is not available; cached for a couple of seconds."""
    with _lock:
        nv = _nvml()
        if nv is None:
            return None
        if time.monotonic() - _state["at"] < CACHE_SECONDS:
            return _state["value"]
        try:
            value = _read(nv)
        except Exception as exc:  # a GPU fallen off the bus must not break the page
            log.warning("reading GPU information failed: %s", exc)
            value = None
        _state["at"], _state["value"] = time.monotonic(), value
        return value
