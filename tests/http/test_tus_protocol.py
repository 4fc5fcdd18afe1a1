"""The tus protocol rules (daemon/http/tus_protocol.py) without HTTP: headers in, decisions out."""

from __future__ import annotations

import base64
import email.utils
import hashlib

import pytest
from ingestd.daemon.http import tus_cors
from ingestd.daemon.http import tus_protocol as tus
from ingestd.daemon.http.errors import ApiError
from ingestd.daemon.http.tus_protocol import UploadView

pytestmark = pytest.mark.unit

PREFIX = "/files/"
ID_A, ID_B = "a" * 32, "b" * 32
MAX = 1000
NOW = 1_000_000.0


def refused(status: int, code: str, fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    assert (info.value.status, info.value.code) == (status, code), info.value.detail
    return info.value


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- versions, methods, options ------------------------------------------------


def test_version_is_required_except_for_options_and_get():
    tus.check_version("OPTIONS", None)
    tus.check_version("GET", None)
    tus.check_version("PATCH", "1.0.0")
    tus.check_version("HEAD", " 1.0.0 ")
    for method in ("POST", "HEAD", "PATCH", "DELETE"):
        error = refused(412, "unsupported_version", tus.check_version, method, None)
        assert error.headers == {"Tus-Version": "1.0.0"}
        refused(412, "unsupported_version", tus.check_version, method, "0.2.2")


def test_method_override():
    assert tus.effective_method("POST", "patch") == "PATCH"
    assert tus.effective_method("POST", " DELETE ") == "DELETE"
    assert tus.effective_method("post", None) == "POST"
    assert tus.effective_method("POST", "") == "POST"


def test_options_headers():
    headers = tus.options_headers(4096)
    assert headers["Tus-Version"] == "1.0.0" and headers["Tus-Max-Size"] == "4096"
    assert "checksum-trailer" not in headers["Tus-Extension"]
    assert "concatenation-unfinished" in headers["Tus-Extension"].split(",")
    algorithms = headers["Tus-Checksum-Algorithm"].split(",")
    assert {"sha1", "sha256", "md5"} <= set(algorithms)
    assert all(a == a.lower() and a.isascii() for a in algorithms)


def test_expires_is_an_rfc7231_date():
    assert tus.expires_header(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    value = tus.expires_header(NOW)
    assert email.utils.parsedate_to_datetime(value).timestamp() == NOW


# -- header values ----------------------------------------------------------------


def test_parse_uint():
    assert tus.parse_uint("Upload-Offset", "0") == 0
    assert tus.parse_uint("Upload-Offset", " 42 ") == 42
    for bad in ("", "-1", "+1", "1.0", "1e3", "0x10", "1 2", "1" * 20):
        refused(400, "invalid_header", tus.parse_uint, "Upload-Offset", bad)


def test_metadata_per_spec():
    # The specification's own example.
    header = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"
    assert tus.parse_metadata(header) == {
        "filename": b"world_domination_plan.pdf",
        "is_confidential": b"",
    }
    binary = bytes(range(256))
    parsed = tus.parse_metadata(f" a {b64(binary)} , empty ,unpadded {b64(b'ab').rstrip('=')}")
    assert parsed == {"a": binary, "empty": b"", "unpadded": b"ab"}
    assert tus.parse_metadata(None) == {} and tus.parse_metadata("  ") == {}


@pytest.mark.parametrize(
    "header",
    [
        "filename !!!",  # not base64
        "filename YQ==,filename Yg==",  # repeated key
        "a YQ==,,b Yg==",  # empty pair
        "a YQ== Yg==",  # two values
        "a YQ===",  # bad padding
        "\x01 YQ==",  # invisible key
    ],
)
def test_bad_metadata_is_400(header):
    refused(400, "invalid_metadata", tus.parse_metadata, header)


def test_file_metadata():
    name, record = tus.file_metadata({"filename": "λ.csv".encode(), "blob": b"\xff\x00"})
    assert name == "λ.csv"
    assert record == {"filename": "λ.csv", "blob": b"\xff\x00"}  # binary stays bytes
    assert tus.file_metadata({"name": b"uppy.bin"})[0] == "uppy.bin"
    assert tus.file_metadata({"filename": b"", "name": b"n"})[0] == "n"
    assert tus.file_metadata({"filename": b"\xff"})[0] is None
    assert tus.file_metadata({})[0] is None
    assert tus.file_metadata({"filename": b"a\0b"})[0] == "a\0b"  # the core refuses it
    refused(400, "invalid_filename", tus.file_metadata, {"filename": b"x" * 5000})


def test_media_type():
    assert tus.media_type({"filetype": "application/jsonl"}) == "application/jsonl"
    assert tus.media_type({"type": "image/png"}) == "image/png"
    assert tus.media_type({"filetype": "text/html\r\nX-Evil: 1"}) is None
    assert tus.media_type({"filetype": b"\xff"}) is None
    assert tus.media_type({}) is None


def test_checksum_header():
    # The specification's example: sha1 of "hello world".
    checksum = tus.parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")
    hasher = checksum.hasher()
    hasher.update(b"hello world")
    assert checksum.matches(hasher)
    other = checksum.hasher()
    other.update(b"hello world!")
    assert not checksum.matches(other)
    for name in ("sha256", "md5", "sha512", "blake3"):
        digest = tus.CHECKSUM_ALGORITHMS[name](b"x").digest()
        assert tus.parse_checksum(f"{name} {b64(digest)}").digest == digest
    assert tus.parse_checksum(None) is None
    refused(400, "unsupported_checksum_algorithm", tus.parse_checksum, "crc32 AAAAAA==")
    refused(400, "unsupported_checksum_algorithm", tus.parse_checksum, "SHA1 AAAA")
    refused(400, "invalid_checksum", tus.parse_checksum, "sha1 ***")
    refused(400, "invalid_checksum", tus.parse_checksum, f"sha1 {b64(b'short')}")


def test_concat_header():
    assert tus.parse_concat(None, PREFIX) is None
    assert tus.parse_concat("partial", PREFIX) == tus.Concat(tus.PARTIAL)
    final = tus.parse_concat(f"final;/files/{ID_A} http://host:1/files/{ID_B}", PREFIX)
    assert final == tus.Concat(tus.FINAL, (ID_A, ID_B))
    assert tus.concat_header(tus.FINAL, (ID_A, ID_B), PREFIX) == (
        f"final;/files/{ID_A} /files/{ID_B}"
    )
    assert tus.concat_header(tus.SINGLE, (), PREFIX) is None
    for bad in ("whole", "final", "final;", f"final;/other/{ID_A}", "final;/files/xyz"):
        refused(400, "invalid_concat", tus.parse_concat, bad, PREFIX)


# -- creation -------------------------------------------------------------------------


def creation(**headers):
    args = {
        "upload_length": None,
        "defer_length": None,
        "upload_metadata": None,
        "upload_concat": None,
        "content_type": None,
        "content_length": None,
        "upload_checksum": None,
        "max_size": MAX,
        "prefix": PREFIX,
    }
    args.update(headers)
    return tus.plan_creation(**args)


def test_plan_creation():
    plan = creation(upload_length="10", upload_metadata="filename YQ==")
    assert (plan.kind, plan.length, plan.with_upload) == (tus.SINGLE, 10, False)
    assert plan.metadata == {"filename": b"a"} and plan.metadata_header == "filename YQ=="
    deferred = creation(defer_length="1")
    assert deferred.length is None and deferred.kind == tus.SINGLE
    partial = creation(upload_length="5", upload_concat="partial")
    assert partial.kind == tus.PARTIAL
    final = creation(upload_concat=f"final;/files/{ID_A}")
    assert (final.kind, final.partials, final.length) == (tus.FINAL, (ID_A,), None)
    sha1 = f"sha1 {b64(hashlib.sha1(b'abc').digest())}"
    with_upload = creation(
        upload_length="10",
        content_type="application/offset+octet-stream",
        content_length=3,
        upload_checksum=sha1,
    )
    assert with_upload.with_upload and with_upload.checksum.algorithm == "sha1"
    assert creation(upload_length="1", upload_checksum=sha1).checksum is None


def test_plan_creation_refusals():
    refused(400, "missing_header", creation)
    refused(400, "invalid_header", creation, upload_length="1", defer_length="1")
    refused(400, "invalid_header", creation, defer_length="true")
    refused(400, "invalid_header", creation, upload_length="ten")
    refused(413, "too_large", creation, upload_length=str(MAX + 1))
    final = f"final;/files/{ID_A}"
    refused(400, "invalid_header", creation, upload_concat=final, upload_length="3")
    refused(400, "invalid_header", creation, upload_concat=final, defer_length="1")
    octets = "application/offset+octet-stream"
    refused(
        403, "final_upload", creation, upload_concat=final, content_type=octets, content_length=3
    )
    refused(
        413,
        "length_exceeded",
        creation,
        upload_length="2",
        content_type=octets,
        content_length=3,
    )
    refused(
        415,
        "unsupported_media_type",
        creation,
        upload_length="3",
        content_type="text/plain",
        content_length=3,
    )
    refused(
        415, "unsupported_media_type", creation, upload_length="3", content_type=None, chunked=True
    )
    refused(400, "invalid_metadata", creation, upload_length="3", upload_metadata="k !")


# -- an upload's state ----------------------------------------------------------------------


def view(**fields) -> UploadView:
    base = {
        "id": ID_A,
        "kind": tus.SINGLE,
        "state": "open",
        "offset": 0,
        "length": 100,
        "expires": NOW + 60,
    }
    base.update(fields)
    return UploadView(**base)


def test_availability():
    tus.check_available(view(), NOW)
    tus.check_available(view(state="completed"), NOW + 3600)  # complete uploads do not expire
    refused(410, "upload_expired", tus.check_available, view(state="expired"), NOW)
    refused(410, "upload_expired", tus.check_available, view(), NOW + 60)
    refused(410, "upload_terminated", tus.check_available, view(state="cancelled"), NOW)
    refused(410, "upload_terminated", tus.check_available, view(terminated=True), NOW)


def test_head_headers_single_and_deferred():
    headers = tus.upload_headers(view(offset=40, metadata_header="k YQ=="), PREFIX)
    assert headers["Upload-Offset"] == "40" and headers["Upload-Length"] == "100"
    assert headers["Cache-Control"] == "no-store" and headers["Tus-Resumable"] == "1.0.0"
    assert headers["Upload-Metadata"] == "k YQ=="
    assert headers["Upload-Expires"] == tus.expires_header(NOW + 60)
    assert "Upload-Concat" not in headers and "Ingestd-File-Id" not in headers
    deferred = tus.upload_headers(view(length=None), PREFIX)
    assert deferred["Upload-Defer-Length"] == "1" and "Upload-Length" not in deferred
    done = tus.upload_headers(
        view(offset=100, state="completed", file_id="f" * 32, job_id="j" * 32), PREFIX
    )
    assert "Upload-Expires" not in done
    assert done["Ingestd-File-Id"] == "f" * 32 and done["Ingestd-Job-Id"] == "j" * 32
    assert done["Ingestd-Upload-State"] == "completed"


def test_head_headers_concatenation():
    partial = tus.upload_headers(view(kind=tus.PARTIAL, offset=5), PREFIX)
    assert partial["Upload-Concat"] == "partial" and partial["Upload-Offset"] == "5"
    pending = view(kind=tus.FINAL, offset=0, length=None, partials=(ID_A, ID_B))
    headers = tus.upload_headers(pending, PREFIX)
    assert "Upload-Offset" not in headers and "Upload-Length" not in headers
    assert "Upload-Defer-Length" not in headers
    assert headers["Upload-Concat"] == f"final;/files/{ID_A} /files/{ID_B}"
    known = tus.upload_headers(view(kind=tus.FINAL, length=30, partials=(ID_A,)), PREFIX)
    assert known["Upload-Length"] == "30" and "Upload-Offset" not in known
    assembled = view(kind=tus.FINAL, offset=30, length=30, assembled=True, partials=(ID_A,))
    headers = tus.upload_headers(assembled, PREFIX)
    assert headers["Upload-Offset"] == headers["Upload-Length"] == "30"
    assert assembled.complete and not view(kind=tus.FINAL).complete


# -- PATCH -------------------------------------------------------------------------------------


def plan(upload: UploadView, **headers):
    args = {
        "content_type": "application/offset+octet-stream",
        "upload_offset": str(upload.offset),
        "upload_length": None,
        "upload_checksum": None,
        "content_length": None,
        "now": NOW,
        "max_size": MAX,
    }
    args.update(headers)
    return tus.plan_patch(upload, **args)


def test_plan_patch():
    p = plan(view(offset=40), content_length=10)
    assert (p.offset, p.limit, p.declare_length, p.noop) == (40, 60, None, False)
    assert plan(view(offset=40)).limit == 60  # no Content-Length: the length bounds it
    assert plan(view(offset=0, length=None)).limit == MAX
    sha = f"sha256 {b64(hashlib.sha256(b'').digest())}"
    assert plan(view(), upload_checksum=sha).checksum.algorithm == "sha256"
    assert plan(view(), content_type="application/offset+octet-stream; x=1").offset == 0


def test_plan_patch_declares_a_deferred_length():
    p = plan(view(offset=40, length=None), upload_length="70", content_length=30)
    assert (p.declare_length, p.limit) == (70, 30)
    assert plan(view(length=70), upload_length="70").declare_length is None
    refused(400, "invalid_length", plan, view(length=70), upload_length="71")
    refused(400, "invalid_length", plan, view(offset=40, length=None), upload_length="39")
    refused(413, "too_large", plan, view(length=None), upload_length=str(MAX + 1))
    refused(
        413,
        "length_exceeded",
        plan,
        view(offset=40, length=None),
        upload_length="50",
        content_length=11,
    )


def test_plan_patch_refusals_in_the_specified_order():
    # A final upload refuses PATCH whatever else is wrong.
    final = view(kind=tus.FINAL, state="expired")
    refused(403, "final_upload", plan, final, content_type="text/plain")
    # Expired before anything else about the request.
    refused(410, "upload_expired", plan, view(expires=NOW), content_type="text/plain")
    refused(415, "unsupported_media_type", plan, view(), content_type=None, upload_offset=None)
    refused(400, "missing_header", plan, view(), upload_offset=None)
    refused(400, "invalid_header", plan, view(), upload_offset="x")
    refused(400, "unsupported_checksum_algorithm", plan, view(), upload_checksum="crc AAAA")
    error = refused(409, "offset_mismatch", plan, view(offset=40), upload_offset="39")
    assert error.extra == {"offset": 40}
    refused(413, "length_exceeded", plan, view(offset=40), content_length=61)
    refused(413, "too_large", plan, view(offset=0, length=None), content_length=MAX + 1)


def test_plan_patch_on_a_complete_upload():
    done = view(offset=100, state="processing")
    p = plan(done, content_length=0)
    assert p.noop and p.limit == 0
    refused(413, "length_exceeded", plan, done, content_length=1)
    refused(409, "offset_mismatch", plan, done, upload_offset="99")


# -- CORS -----------------------------------------------------------------------------------------


def test_cors():
    assert tus_cors.cors_headers(None, ["*"]) == {}
    assert tus_cors.cors_headers("https://a", []) == {}
    anyone = tus_cors.cors_headers("https://a", ["*"])
    assert anyone["Access-Control-Allow-Origin"] == "*"
    exposed = anyone["Access-Control-Expose-Headers"].split(", ")
    for name in ("Location", "Upload-Offset", "Upload-Length", "Upload-Metadata"):
        assert name in exposed
    assert {"Upload-Defer-Length", "Upload-Concat", "Upload-Expires", "Tus-Version"} <= set(exposed)
    listed = tus_cors.cors_headers("https://a", ["https://a", "https://b"])
    assert listed["Access-Control-Allow-Origin"] == "https://a" and listed["Vary"] == "Origin"
    assert tus_cors.cors_headers("https://c", ["https://a"]) == {}
    preflight = tus_cors.preflight_headers("https://a", ["*"])
    assert set(preflight["Access-Control-Allow-Methods"].split(", ")) >= {
        "POST",
        "PATCH",
        "HEAD",
        "DELETE",
    }
    allowed = preflight["Access-Control-Allow-Headers"].split(", ")
    assert {"Tus-Resumable", "Upload-Offset", "Upload-Checksum", "X-HTTP-Method-Override"} <= set(
        allowed
    )
    assert tus_cors.preflight_headers("https://c", ["https://a"]) == {}
