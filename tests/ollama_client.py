"""The official `ollama` Python package against inhoused's Unix socket (tests/models.rs).

Usage: ollama_client.py SOCKET MODEL. Lists models, then runs a plain and a streaming chat;
prints one line per check and exits non-zero on the first failure.
"""
import sys

import httpx
import ollama

socket, model = sys.argv[1], sys.argv[2]
client = ollama.Client(host="http://inhouse", transport=httpx.HTTPTransport(uds=socket))

names = [m.model for m in client.list().models]
assert model in names, f"{model} not in {names}"
print("list ok:", names)

messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
options = {"temperature": 0, "seed": 1, "num_predict": 16}
plain = client.chat(model=model, messages=messages, options=options)
assert plain.message.role == "assistant", plain
assert plain.message.content.strip(), plain
assert plain.done, plain
print("plain chat ok:", repr(plain.message.content))

parts = list(client.chat(model=model, messages=messages, options=options, stream=True))
assert len(parts) >= 2, parts
assert parts[-1].done, parts[-1]
streamed = "".join(p.message.content for p in parts)
assert streamed == plain.message.content, (streamed, plain.message.content)
print(f"streaming chat ok: {len(parts)} chunks, same text")

try:
    client.chat(model="no-such-model", messages=messages)
    raise SystemExit("an unknown model did not fail")
except ollama.ResponseError as e:
    assert e.status_code == 404, e
print("ollama client: list, plain and streaming chat ok")
