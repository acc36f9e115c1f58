"""Answers with sources through the official `openai` client over the socket
(tests/knowledge_answers.rs: the real daemon, a chat model and all-MiniLM-L6-v2 as the
embedding model, temperature 0).

Usage: python tests/openai_file_search.py SOCKET MODEL. Uploads a small staff handbook written
for the test (four files), makes a vector store of it, and checks:
- the Responses API's `file_search` tool: a `file_search_call` item (query, results when
  `include` asks), then a message whose `file_citation` annotations point at the file that holds
  the answer, with the inhouse extensions (quote, chunk_index, start, end, vector_store_id);
- the streamed events (`response.file_search_call.*`, `response.output_text.annotation.added`)
  and the stored response read back;
- chat completions' `file_search` extension, plain and streamed;
- an unknown vector store (404 vector_store_not_found) and a bad `max_num_results` (400).
Prints one line per check and, last, `store: vs_…`, `store_name: …` and `leave_file: file-…` for
the Rust test (which runs `inhouse ask` on them); exits non-zero on the first failure.
"""
import json
import sys
import uuid

import httpx
import openai

sock, model = sys.argv[1], sys.argv[2]
http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=600)
client = openai.OpenAI(base_url="http://inhouse/v1", api_key="not-used", http_client=http)

DOCS = {
    "travel-policy.md": """# Travel policy

Business travel is booked through the travel portal, never privately. Trains are the rule for
journeys under 600 kilometres; flights need the approval of a department head. Hotels are
reimbursed up to 140 euros a night in most cities.
""",
    "leave-policy.md": """# Annual leave

Every employee is entitled to 31 days of paid annual leave per calendar year. Up to five unused
days may be carried over, and carried-over days expire on the 31st of March of the next year.
Leave is requested in the HR portal at least two weeks ahead.
""",
    "it-security.md": """# IT security

Passwords are at least 14 characters long and are never reused. Laptops lock after five minutes
without use. A lost badge or laptop is reported to the service desk at extension 4444 at once.
""",
    "canteen.txt": """The staff canteen on the ground floor serves lunch from 11:30 to 14:00 on
weekdays. A vegetarian dish is offered every day, and the coffee bar stays open until 17:00.
""",
}
QUESTION = "How many days of paid annual leave does every employee get per year?"
RIGHT = "leave-policy.md"

files = {}
for name, text in DOCS.items():
    f = client.files.create(file=(name, text.encode()), purpose="assistants")
    assert f.id.startswith("file-") and f.filename == name, f
    files[name] = f
leave = files[RIGHT]
vs = client.vector_stores.create(name=f"handbook-{uuid.uuid4().hex[:8]}")
assert vs.id.startswith("vs_"), vs
for f in files.values():
    attached = client.vector_stores.files.create_and_poll(vector_store_id=vs.id, file_id=f.id)
    assert attached.status == "completed", attached
print("ingested:", vs.id, len(files), "files")

hits = client.vector_stores.search(vector_store_id=vs.id, query=QUESTION, max_num_results=3)
top = [h.file_id for h in hits.data]
assert leave.id in top, (top, leave.id)
print("search ok:", [h.filename for h in hits.data])


def file_citations(message_item):
    return [a for part in message_item.content for a in (part.annotations or [])]


def check_citations(text, annotations, what):
    assert annotations, f"{what}: no annotation: {text!r}"
    for a in annotations:
        a = a if isinstance(a, dict) else a.model_dump()
        assert a["type"] == "file_citation", a
        assert 0 <= a["index"] <= len(text), (a, len(text))
        assert a["file_id"] in {f.id for f in files.values()}, a
        assert a["filename"] == next(n for n, f in files.items() if f.id == a["file_id"]), a
        assert a["vector_store_id"] == vs.id, a
        assert isinstance(a["quote"], str) and a["quote"], a
        assert a["start"] <= a["end"] and a["chunk_index"] >= 0, a
    cited = [(a if isinstance(a, dict) else a.model_dump())["file_id"] for a in annotations]
    assert leave.id in cited, f"{what}: the answer cites {cited}, not {RIGHT} ({leave.id}): {text!r}"


TOOL = {"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": 3}

# 1. Responses with file_search: the search item, then the cited answer.
r = client.responses.create(model=model, input=QUESTION, tools=[TOOL],
                            include=["file_search_call.results"], temperature=0,
                            max_output_tokens=96)
assert r.status == "completed", r
fs, msg = r.output[0], r.output[-1]
assert fs.type == "file_search_call" and fs.status == "completed", fs
assert fs.id.startswith("fs_"), fs.id
assert fs.queries == [QUESTION], fs.queries
assert fs.results and leave.id in [x.file_id for x in fs.results], fs.results
assert all(x.text and x.filename for x in fs.results), fs.results
assert msg.type == "message", r.output
annotations = file_citations(msg)
check_citations(r.output_text, annotations, "responses")
print("responses ok:", repr(r.output_text), [a.filename for a in annotations])

# Without `include`, the results are not shown; the tool is echoed.
r2 = client.responses.create(model=model, input=QUESTION, tools=[TOOL], temperature=0,
                             max_output_tokens=96)
assert r2.output[0].type == "file_search_call" and r2.output[0].results is None, r2.output[0]
assert r2.tools[0].type == "file_search" and r2.tools[0].vector_store_ids == [vs.id], r2.tools
print("no include ok")

# 2. Stored: read back whole, citations and search included.
again = client.responses.retrieve(r.id)
assert again.output_text == r.output_text, (again, r)
assert [a.model_dump() for a in file_citations(again.output[-1])] == \
    [a.model_dump() for a in annotations], again
assert again.output[0].type == "file_search_call" and again.output[0].results, again.output[0]
print("stored ok")

# 3. Streamed: the search's events, the annotations announced before the text is done.
events = list(client.responses.create(model=model, input=QUESTION, tools=[TOOL],
                                      temperature=0, max_output_tokens=96, stream=True))
kinds = [e.type for e in events]
assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
assert [e.sequence_number for e in events] == list(range(len(events))), kinds
order = ["response.file_search_call.in_progress", "response.file_search_call.searching",
         "response.file_search_call.completed"]
assert [k for k in kinds if k.startswith("response.file_search_call.")] == order, kinds
added = [e for e in events if e.type == "response.output_text.annotation.added"]
assert added, kinds
assert kinds.index("response.output_text.annotation.added") < kinds.index(
    "response.output_text.done"), kinds
final = events[-1].response
streamed = [a for p in final.output[-1].content for a in (p.annotations or [])]
added_json = [e.annotation if isinstance(e.annotation, dict) else e.annotation.model_dump()
              for e in added]
assert added_json == [a.model_dump() for a in streamed], (added_json, streamed)
check_citations(final.output_text, streamed, "streamed responses")
print("stream ok:", len(added), "annotations")

# 4. Chat completions with the file_search extension.
messages = [{"role": "user", "content": QUESTION}]
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=messages, temperature=0, max_tokens=96,
    extra_body={"file_search": {"vector_store_ids": [vs.id], "max_num_results": 3}})
body = json.loads(raw.http_response.text)
m = body["choices"][0]["message"]
check_citations(m["content"], m["annotations"], "chat")
print("chat ok:", repr(m["content"]), [a["filename"] for a in m["annotations"]])

chunks = list(client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=96, stream=True,
    extra_body={"file_search": {"vector_store_ids": [vs.id], "max_num_results": 3}}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
ann = (last.choices[0].delta.model_extra or {}).get("annotations") or \
    getattr(last.choices[0].delta, "annotations", None)
ann = [a if isinstance(a, dict) else a.model_dump() for a in ann or []]
check_citations(text, ann, "streamed chat")
print("chat stream ok")

# 5. Errors: an unknown store is a 404 like any store the caller may not read.
try:
    client.responses.create(model=model, input=QUESTION, tools=[
        {"type": "file_search", "vector_store_ids": ["vs_0000000000000000"]}])
    raise AssertionError("an unknown vector store was searched")
except openai.NotFoundError as e:
    assert e.body["code"] == "vector_store_not_found", e.body
try:
    client.responses.create(model=model, input=QUESTION, tools=[
        {"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": 0}])
    raise AssertionError("max_num_results 0 was taken")
except openai.BadRequestError as e:
    assert e.body["param"] == "tools", e.body
print("errors ok")

print("store:", vs.id)
print("store_name:", vs.name)
print("leave_file:", leave.id)
print("file search: all checks ok")
