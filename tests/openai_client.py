"""The official `openai` Python client against inhoused's Unix socket.

Usage: python tests/openai_client.py SOCKET MODEL
Run by tests/serve.rs with the venv that scripts/setup makes (packages pinned in
tests/requirements.txt). Exits non-zero on any mismatch.
"""
import sys

import httpx
import openai

sock, model = sys.argv[1], sys.argv[2]
http = httpx.Client(transport=httpx.HTTPTransport(uds=sock))
client = openai.OpenAI(base_url="http://inhouse/v1", api_key="not-used", http_client=http)

messages = [{"role": "user", "content": "What is the capital of France?"}]
plain = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
text = plain.choices[0].message.content
assert text, "empty answer"
assert plain.usage.completion_tokens > 0
assert plain.choices[0].finish_reason in ("stop", "length")

chunks = []
for chunk in client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=24, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        chunks.append(chunk.choices[0].delta.content)
assert len(chunks) >= 2, f"only {len(chunks)} chunks"
assert "".join(chunks) == text, f"stream {''.join(chunks)!r} != plain {text!r}"

models = [m.id for m in client.models.list()]
assert model in models, models

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise SystemExit("unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404

print("openai client: plain and streaming chat ok:", repr(text))
