"""/v1/files: upload (multipart, validated by the data stage), list (cursor pages), retrieve, content, delete: the
shapes of OpenAI's files API, so the official client works unchanged but for base_url and api_key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from tuneforge.jobs.errors import NotFoundError
from tuneforge.jobs.files import FileStore
from tuneforge.jobs.records import FilePurpose, FileRecord, check_choice
from tuneforge.jobs.store import get_file, list_files
from tuneforge.serve.errors import error_responses
from tuneforge.serve.protocol import FileDeleted, FileList, FileObject

router = APIRouter()
CHUNK = 1 << 20  # bytes read from the upload at a time: an upload never sits in memory whole


def _files(request: Request) -> FileStore:
    store: FileStore | None = request.app.state.files
    if store is None:
        raise NotFoundError(
            "this server keeps no files", "start it with `tuneforge serve --data-dir DIR` to accept uploads", "file"
        )
    return store


def _object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        status=record.status,
        status_details=record.status_details,
    )


@router.post("/v1/files", response_model=FileObject, responses=error_responses(400, 401))
async def upload(request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]) -> FileObject:
    """Upload a file; with purpose "fine-tune" it is validated at once (status processed or error, with the
    findings in status_details)."""
    store = _files(request)

    def chunks() -> Iterator[bytes]:
        while block := file.file.read(CHUNK):
            yield block

    check_choice(purpose, FilePurpose, "purpose")
    record = await run_in_threadpool(store.save, file.filename or "upload", purpose, chunks())  # type: ignore[arg-type]
    return _object(record)


@router.get("/v1/files", response_model=FileList, responses=error_responses(400, 401))
def list_all(
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> FileList:
    """The files, newest first (order=asc: oldest first), a page of `limit` after the file `after`."""
    page = list_files(_files(request).db, after, limit, order, purpose)
    data = [_object(r) for r in page.data]
    return FileList(data=data, first_id=page.first_id, last_id=page.last_id, has_more=page.has_more)


@router.get("/v1/files/{file_id}", response_model=FileObject, responses=error_responses(401, 404))
def retrieve(request: Request, file_id: str) -> FileObject:
    """One file's record."""
    return _object(get_file(_files(request).db, file_id))


@router.get("/v1/files/{file_id}/content", responses=error_responses(401, 404))
def content(request: Request, file_id: str) -> FileResponse:
    """The file's bytes, as uploaded."""
    return FileResponse(_files(request).content(file_id), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=error_responses(401, 404))
def delete(request: Request, file_id: str) -> FileDeleted:
    """Delete a file: its record, bytes and validation report."""
    return FileDeleted(id=file_id, deleted=_files(request).delete(file_id))
