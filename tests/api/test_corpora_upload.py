"""POST /corpora as a file part or a raw body, other types 415, limits on the file itself; DELETE /corpora/{id}."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service.corpora import CorpusStore
from tests.conftest import make_settings

TEXT = "the cat sat on the mat; le chat était sur le tapis. 猫がマットに座った。\n" * 20
DATA = TEXT.encode()


def form(*parts: tuple[str, bytes], boundary: str = "XyZzY-b0undary") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of (Content-Disposition params, data) parts, as a browser or curl -F sends it."""
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + data + b"\r\n"
        for disposition, data in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def stored(client: TestClient, corpus_id: str) -> bytes:
    return client.app.state.corpora.path(corpus_id).read_bytes()  # what POST /train {"corpus_id"} reads


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    store = tmp_path_factory.mktemp("small_corpora")
    with TestClient(create_app(make_settings(store, max_corpus_bytes=1000))) as c:
        c.store = store
        yield c


def assert_nothing_left(client) -> None:
    assert list(client.store.glob("corpora/*")) == []  # no text, no record, no temporary file
    assert client.get("/corpora").json()["corpora"] == []


def test_a_file_part_stores_exactly_the_files_bytes(client):
    r = client.post("/corpora", files={"file": ("text.txt", DATA, "text/plain")})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["bytes"] == len(DATA) and info["chars"] == len(TEXT)
    assert stored(client, info["corpus_id"]) == DATA
    assert info["corpus_id"] in [c["corpus_id"] for c in client.get("/corpora").json()["corpora"]]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([('name="note"', b"not this one"), ('name="upload"; filename="a.txt"', DATA)], DATA),  # first file part
        ([('name="note"', b"not this one"), ('name="file"', DATA)], DATA),  # curl -F "file=<a.txt"
        ([('name="file"; filename="a.txt"', DATA), ('name="file"; filename="b.txt"', b"a second file")], DATA),
    ],
)
def test_the_part_taken_is_the_file(client, parts, expected):
    body, headers = form(*parts)
    r = client.post("/corpora", content=body, headers=headers)
    assert r.status_code == 201, r.text
    assert stored(client, r.json()["corpus_id"]) == expected


def test_a_form_without_a_file_part_is_422_naming_file(small):
    """The schema says a part named `file`: a form of other fields is refused, not read as the text."""
    body, headers = form(('name="text"', b"a text field"), ('name="note"', b"another field"))
    r = small.post("/corpora", content=body, headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "file" and "named 'file'" in error["message"], error
    assert_nothing_left(small)


def test_a_multipart_body_is_parsed_as_it_streams(tmp_path):
    """Boundaries and headers split across any pieces: fed one byte at a time, the file comes out whole."""
    body, headers = form(('name="note"', b"x" * 50), ('name="file"; filename="a.txt"', DATA))

    async def one_byte_at_a_time():
        for i in range(len(body)):
            yield body[i : i + 1]

    store = CorpusStore(tmp_path, max_bytes=10_000)
    info = asyncio.run(store.upload(headers["content-type"], one_byte_at_a_time()))
    assert store.path(info["corpus_id"]).read_bytes() == DATA and info["chars"] == len(TEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{info['corpus_id']}.txt", f"{info['corpus_id']}.json"]
    )


def test_raw_bodies_of_the_accepted_types_are_stored_and_others_are_415(client):
    accepted = [
        "text/plain",
        "text/plain; charset=utf-8",
        "Text/Plain;charset=UTF-8",
        "application/octet-stream",
        "application/x-www-form-urlencoded",  # curl --data-binary @file.txt
        None,
    ]
    for content_type in accepted:
        headers = {"content-type": content_type} if content_type else {}
        r = client.post("/corpora", content=DATA, headers=headers)
        assert r.status_code == 201, (content_type, r.text)
        assert stored(client, r.json()["corpus_id"]) == DATA, content_type
    for content_type in ("application/json", "text/html", "application/xml", "image/png"):
        r = client.post("/corpora", content=DATA, headers={"content-type": content_type})
        assert r.status_code == 415, (content_type, r.text)
        assert r.json()["error"]["type"] == "unsupported_media_type"


def test_a_json_body_is_415_naming_the_accepted_types(client):
    before = client.get("/corpora").json()["corpora"]
    r = client.post("/corpora", json={"text": TEXT})
    assert r.status_code == 415
    error = r.json()["error"]
    assert error["type"] == "unsupported_media_type"
    for accepted in ("application/json", "text/plain", "multipart/form-data", "application/octet-stream"):
        assert accepted in error["message"]
    assert client.get("/corpora").json()["corpora"] == before


def test_the_limit_is_on_the_file_not_the_multipart_framing(small):
    body, headers = form(('name="file"; filename="a.txt"', b"y" * 1000))
    assert len(body) > 1000
    r = small.post("/corpora", content=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["bytes"] == 1000
    assert small.delete(f"/corpora/{r.json()['corpus_id']}").status_code == 204


def test_a_multipart_file_over_the_limit_is_413(small):
    body, headers = form(('name="file"; filename="a.txt"', b"y" * 1001))
    r = small.post("/corpora", content=body, headers=headers)
    assert r.status_code == 413
    assert r.json()["error"] == {
        "type": "too_large",
        "message": "the corpus is larger than the limit of 1000 bytes",
        "param": "file",
    }
    body, headers = form(('name="file"; filename="a.txt"', b"y" * 100), ('name="junk"', b"z" * 200_000))
    r = small.post("/corpora", content=body, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["param"] == "file"  # nor is the rest of the body unbounded
    assert_nothing_left(small)


def test_invalid_utf8_inside_a_multipart_file_is_422(small):
    body, headers = form(('name="file"; filename="a.txt"', b"good text then caf\xe9 au lait"))
    r = small.post("/corpora", content=body, headers=headers)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["param"] == "file"
    assert error["message"] == "the corpus is not valid UTF-8 (byte 18)"  # counted within the file
    assert_nothing_left(small)


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b"no framing at all", "multipart/form-data; boundary=XyZ", "malformed"),
        (form(('name="file"', DATA))[0][:200], "multipart/form-data; boundary=XyZzY-b0undary", "closing boundary"),
        (b"--XyZ--\r\n", "multipart/form-data; boundary=XyZ", "no part"),
        (form(('name="file"', DATA))[0], "multipart/form-data", "boundary"),
        (
            b"--XyZ\r\nContent-Disposition: form-data\r\nbroken header\r\n\r\nabc\r\n--XyZ--\r\n",
            "multipart/form-data; boundary=XyZ",
            "malformed",
        ),
    ],
)
def test_a_malformed_multipart_body_is_422_naming_file(small, body, content_type, words):
    r = small.post("/corpora", content=body, headers={"content-type": content_type})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "file" and words in error["message"], error
    assert_nothing_left(small)


def test_delete_removes_the_text_and_its_record(small):
    corpus_id = small.post("/corpora", content=b"a short text to delete").json()["corpus_id"]
    assert {p.name for p in small.store.glob("corpora/*")} == {f"{corpus_id}.txt", f"{corpus_id}.json"}
    r = small.delete(f"/corpora/{corpus_id}")
    assert r.status_code == 204 and r.content == b""
    assert small.get("/corpora").json()["corpora"] == []
    assert list(small.store.glob("corpora/*")) == []
    for gone in (corpus_id, "0" * 32, "not-an-id"):
        r = small.delete(f"/corpora/{gone}")
        assert r.status_code == 404, gone
        assert r.json()["error"]["type"] == "not_found"


def test_delete_needs_the_admin_key(tmp_path):
    settings = make_settings(tmp_path, api_key="user-key", admin_api_key="admin-key")
    with TestClient(create_app(settings)) as c:
        admin = {"Authorization": "Bearer admin-key"}
        corpus_id = c.post("/corpora", content=DATA, headers=admin).json()["corpus_id"]
        for headers in ({}, {"Authorization": "Bearer user-key"}):
            assert c.delete(f"/corpora/{corpus_id}", headers=headers).status_code == 401
        assert c.delete(f"/corpora/{corpus_id}", headers=admin).status_code == 204


def test_the_docs_show_both_ways_to_upload(client):
    operations = client.get("/openapi.json").json()["paths"]["/corpora"]
    content = operations["post"]["requestBody"]["content"]
    text = content["text/plain"]["schema"]  # what is kept: UTF-8 text, 3 characters or more, not only whitespace
    assert text["type"] == "string" and text["minLength"] == 3 and "pattern" in text
    assert content["multipart/form-data"]["schema"]["properties"]["file"] == text
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert "415" in operations["post"]["responses"]
    assert "204" in client.get("/openapi.json").json()["paths"]["/corpora/{corpus_id}"]["delete"]["responses"]
