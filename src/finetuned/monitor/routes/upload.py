"""Add data: a file streamed into inbox/normal/ or inbox/priority/."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from finetuned.monitor.deps import FilesDep, Guarded, SettingsDep
from finetuned.monitor.schemas import QueuePriority, UploadResult
from finetuned.monitor.upload import UploadError, receive

router = APIRouter(prefix="/api/upload", tags=["upload"], dependencies=Guarded)


@router.post("", status_code=201, responses={400: {}, 411: {}, 413: {}, 415: {}, 507: {}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload(
    request: Request, files: FilesDep, settings: SettingsDep,
    name: Annotated[str, Query(min_length=1, max_length=1024, description="the file's name; its base name is kept")],
    priority: Annotated[QueuePriority, Query(description="high puts it into inbox/priority/")] = "normal",
) -> UploadResult:
    """The request body is the file itself (JSONL, or a JSON array), streamed to disk; the daemon queues it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise HTTPException(413, f"the file is over the upload limit of {settings.max_upload_mb:.0f} MB")
    folder = files.ws.inbox_priority if priority == "high" else files.ws.inbox_normal
    try:
        path, size = await receive(request.stream(), files.ws, folder, name, settings.max_upload_bytes)
    except UploadError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    where = f"inbox/{folder.name}/"
    return UploadResult(ok=True, file=path.name, folder=where, bytes=size,
                        message=f"{path.name} is in {where}; the daemon queues it once it has checked it")
