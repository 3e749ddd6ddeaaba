"""The API's OpenAPI schema, behind the same guard as the API it describes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from finetuned.monitor.deps import Guarded

router = APIRouter(tags=["schema"], dependencies=Guarded, include_in_schema=False)


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
