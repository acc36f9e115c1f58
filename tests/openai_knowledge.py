"""Files and vector stores through the official `openai` Python client over inhoused's socket.

Usage: python tests/openai_knowledge.py SOCKET DOCS_DIR SHARE_GID
Run by tests/knowledge.rs. Uploads the documents of tests/knowledge_docs/ (written for this
test), makes a collection shared with SHARE_GID of the six public ones and a private one of the
board's document, searches a dozen written questions (the chunk holding the answer must be in
the top 3), checks attribute filters, and prints the ids as JSON on its last line.
"""
import json
import pathlib
import sys

import httpx
import openai

sock, docs, share_gid = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=300)
client = openai.OpenAI(base_url="http://inhouse/v1", api_key="not-used", http_client=http)

PUBLIC = {
    "travel-policy.md": "finance",
    "security-handbook.md": "security",
    "tidewatch-s4.md": "product",
    "onboarding.md": "hr",
    "leave-policy.md": "hr",
    "facilities.md": "facilities",
}

# (question, a phrase only the chunk that answers it holds, the file it is in)
QUESTIONS = [
    ("How much is the daily allowance when travelling abroad?", "65 euros", "travel-policy.md"),
    ("Who has to approve a trip that costs more than 1,500 euros?", "written approval", "travel-policy.md"),
    ("How long does the sonar battery last?", "14 hours", "tidewatch-s4.md"),
    ("What is the maximum range of the Tidewatch S4?", "320 metres", "tidewatch-s4.md"),
    ("Where do visitors sign in when they arrive?", "desk B", "security-handbook.md"),
    ("What number do I call to report a security incident?", "4477", "security-handbook.md"),
    ("Where do new employees pick up their laptop?", "floor 3", "onboarding.md"),
    ("How long is the probation period for new staff?", "six months", "onboarding.md"),
    ("How many days of paid annual leave do employees get?", "27 days", "leave-policy.md"),
    ("By what time must I tell my manager that I am sick?", "before 9:00", "leave-policy.md"),
    ("Where can I store my bicycle at the office?", "bicycle room", "facilities.md"),
    ("What are the opening hours of the canteen?", "11:30", "facilities.md"),
]

uploaded = {}
for name in list(PUBLIC) + ["project-nightjar.md"]:
    with open(docs / name, "rb") as f:
        up = client.files.create(file=(name, f.read()), purpose="assistants")
    assert up.id.startswith("file-"), up
    assert up.filename == name and up.purpose == "assistants" and up.bytes > 0, up
    uploaded[name] = up.id
assert {f.id for f in client.files.list()} >= set(uploaded.values())
assert client.files.retrieve(uploaded["onboarding.md"]).filename == "onboarding.md"
assert client.files.content(uploaded["onboarding.md"]).read() == (docs / "onboarding.md").read_bytes()

handbook = client.vector_stores.create(
    name="Staff handbook",
    metadata={"owner": "hr"},
    chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}},
    extra_body={"groups": [share_gid]},
)
assert handbook.id.startswith("vs_") and handbook.name == "Staff handbook", handbook
assert handbook.model_extra["groups"] == [share_gid], handbook.model_extra
for name, dept in PUBLIC.items():
    vf = client.vector_stores.files.create_and_poll(
        vector_store_id=handbook.id, file_id=uploaded[name], attributes={"department": dept}
    )
    assert vf.status == "completed", (name, vf)
    assert vf.usage_bytes > 0 and vf.model_extra["chunks"] >= 1, vf
board = client.vector_stores.create(name="Board")
vf = client.vector_stores.files.create_and_poll(
    vector_store_id=board.id, file_id=uploaded["project-nightjar.md"]
)
assert vf.status == "completed", vf

stores = {s.id: s for s in client.vector_stores.list()}
assert handbook.id in stores and board.id in stores, stores
h = client.vector_stores.retrieve(handbook.id)
assert h.file_counts.completed == 6 and h.file_counts.total == 6, h.file_counts
assert h.status == "completed", h
listed = {f.id for f in client.vector_stores.files.list(vector_store_id=handbook.id)}
assert listed == {uploaded[n] for n in PUBLIC}, listed

id_to_name = {v: k for k, v in uploaded.items()}
ranks = []
for question, phrase, name in QUESTIONS:
    page = client.vector_stores.search(vector_store_id=handbook.id, query=question, max_num_results=5)
    results = list(page)
    assert results, question
    for r in results:
        assert r.file_id in id_to_name and id_to_name[r.file_id] in PUBLIC, r
        assert 0.0 <= r.score <= 1.0, r
    rank = next(
        (i for i, r in enumerate(results) if phrase in r.content[0].text and r.filename == name),
        None,
    )
    print(f"rank {rank}: {question!r} -> {[(r.filename, round(r.score, 3)) for r in results[:3]]}")
    assert rank is not None and rank < 3, f"{question!r}: the chunk with {phrase!r} is not in the top 3"
    ranks.append(rank)

# Filters on attributes apply before ranking: only the security file answers, whatever is asked.
page = client.vector_stores.search(
    vector_store_id=handbook.id,
    query="How many days of paid annual leave do employees get?",
    filters={"type": "eq", "key": "department", "value": "security"},
)
got = list(page)
assert got and all(r.attributes["department"] == "security" for r in got), got
page = client.vector_stores.search(
    vector_store_id=handbook.id,
    query="leave",
    filters={"type": "or", "filters": [
        {"type": "eq", "key": "department", "value": "hr"},
        {"type": "eq", "key": "department", "value": "product"},
    ]},
    max_num_results=50,
)
assert {r.attributes["department"] for r in page} <= {"hr", "product"}

# Each ranker on its own answers too.
for ranker in ["bm25", "vector", "auto"]:
    page = client.vector_stores.search(
        vector_store_id=handbook.id,
        query="What is the maximum range of the Tidewatch S4?",
        ranking_options={"ranker": ranker},
        max_num_results=3,
    )
    assert any("320 metres" in r.content[0].text for r in page), ranker

try:
    client.vector_stores.search(vector_store_id="vs_000000000000000000000000", query="x")
    raise SystemExit("an unknown vector store was searched")
except openai.NotFoundError as e:
    assert e.status_code == 404

try:
    client.vector_stores.search(vector_store_id=handbook.id, query="x", max_num_results=51)
    raise SystemExit("max_num_results 51 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

print(f"top-1 {sum(r == 0 for r in ranks)}/{len(ranks)}, top-3 {len(ranks)}/{len(ranks)}")
print(json.dumps({"handbook": handbook.id, "board": board.id, "files": uploaded}))
