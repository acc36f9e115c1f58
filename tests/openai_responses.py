"""The Responses API with the official `openai` client over the socket (tests/tools.rs, on the
Qwen2.5-Coder test model, temperature 0).

Usage: python tests/openai_responses.py SOCKET MODEL. Prints one line per check and, last, the
ids of the stored responses as `ids: …` (the Rust test then checks them as another uid and after
erasure); exits non-zero on the first failure.
"""
import json
import sys

import httpx
import jsonschema
import openai

sock, model = sys.argv[1], sys.argv[2]
http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=600)
client = openai.OpenAI(base_url="http://inhouse/v1", api_key="not-used", http_client=http)
ids = []
SYSTEM = "You are a helpful assistant. Answer briefly."

# 1. Plain: a completed response with message output and usage.
r = client.responses.create(model=model, instructions=SYSTEM,
                            input="What is the capital of France? One word.",
                            temperature=0, max_output_tokens=16)
assert r.object == "response" and r.status == "completed", r
assert r.id.startswith("resp_"), r.id
assert "paris" in r.output_text.lower(), r.output_text
assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens > 0, r.usage
again = client.responses.retrieve(r.id)
assert again.output_text == r.output_text, (again, r)
ids.append(r.id)
print("plain ok:", repr(r.output_text))

# 2. Streamed: typed events in order, numbered, the deltas joining to the final text.
events = list(client.responses.create(model=model, instructions=SYSTEM,
                                      input="Name three colours.", temperature=0,
                                      max_output_tokens=32, stream=True))
kinds = [e.type for e in events]
assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
assert [e.sequence_number for e in events] == list(range(len(events))), kinds
for k in ["response.output_item.added", "response.output_text.delta",
          "response.output_text.done", "response.output_item.done"]:
    assert k in kinds, (k, kinds)
assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta") \
    < kinds.index("response.output_text.done") < kinds.index("response.output_item.done")
joined = "".join(e.delta for e in events if e.type == "response.output_text.delta")
final = events[-1].response
assert joined and joined == final.output_text, (joined, final.output_text)
assert [e.text for e in events if e.type == "response.output_text.done"] == [joined]
ids.append(final.id)
print("stream ok:", len(events), "events")

# The SDK's own stream helper accumulates the same events into the same response.
with client.responses.stream(model=model, instructions=SYSTEM, input="Say hi.",
                             temperature=0, max_output_tokens=16) as s:
    for _ in s:
        pass
    helped = s.get_final_response()
assert helped.status == "completed" and helped.output_text, helped
print("stream helper ok:", repr(helped.output_text))

# 3. Three turns through previous_response_id: the third answer needs the first turn.
t1 = client.responses.create(model=model, instructions=SYSTEM, temperature=0,
                             max_output_tokens=32,
                             input="Please remember my number: 7341.")
t2 = client.responses.create(model=model, instructions=SYSTEM, temperature=0,
                             max_output_tokens=32, previous_response_id=t1.id,
                             input="My favourite colour is green.")
t3 = client.responses.create(model=model, instructions=SYSTEM, temperature=0,
                             max_output_tokens=32, previous_response_id=t2.id,
                             input="What is my number? Reply with the number only.")
assert "7341" in t3.output_text, (t1.output_text, t2.output_text, t3.output_text)
assert t3.previous_response_id == t2.id
own = client.responses.input_items.list(t3.id)
assert [i.type for i in own.data] == ["message"], own
ids += [t1.id, t2.id, t3.id]
print("three turns ok:", repr(t3.output_text))

# 4. A function tool round trip: function_call item, function_call_output input, final text.
WEATHER = {"type": "object",
           "properties": {"city": {"type": "string"},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
tools = [{"type": "function", "name": "get_weather",
          "description": "The current weather in a city", "parameters": WEATHER}]
c1 = client.responses.create(model=model, input="What is the weather like in Paris today?",
                             tools=tools, tool_choice="required", temperature=0,
                             max_output_tokens=96)
calls = [i for i in c1.output if i.type == "function_call"]
assert calls, c1.output
call = calls[0]
assert call.name == "get_weather" and call.call_id, call
jsonschema.validate(json.loads(call.arguments), WEATHER)
c2 = client.responses.create(
    model=model, previous_response_id=c1.id, tools=tools, tool_choice="none",
    temperature=0, max_output_tokens=48,
    input=[{"type": "function_call_output", "call_id": call.call_id,
            "output": json.dumps({"temperature": 21, "unit": "celsius"})}])
assert c2.status == "completed" and "21" in c2.output_text, c2.output_text
ids += [c1.id, c2.id]
print("function round trip ok:", call.arguments, "->", repr(c2.output_text))

# Streamed, the call's arguments arrive as deltas on its item.
events = list(client.responses.create(model=model, input="Weather in Oslo, in celsius?",
                                      tools=tools, tool_choice="required", temperature=0,
                                      max_output_tokens=96, stream=True))
args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
jsonschema.validate(json.loads(args), WEATHER)
print("streamed call ok:", args)

# 5. text.format json_schema: valid JSON of that schema.
PERSON = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
j = client.responses.create(model=model, instructions=SYSTEM, temperature=0,
                            max_output_tokens=64,
                            input="Invent a person: give a name and an age.",
                            text={"format": {"type": "json_schema", "name": "person",
                                             "schema": PERSON, "strict": True}})
jsonschema.validate(json.loads(j.output_text), PERSON)
ids.append(j.id)
print("json_schema ok:", j.output_text)

# 6. Refused fields name themselves; an unknown id is a 404.
try:
    client.responses.create(model=model, input="x", tools=[{"type": "web_search"}])
    raise AssertionError("web_search was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "tools", e.body
try:
    client.responses.retrieve("resp_0123456789abcdef0123456789abcdef")
    raise AssertionError("an unknown id was found")
except openai.NotFoundError as e:
    assert e.body["code"] == "response_not_found", e.body

# 7. Delete: gone afterwards.
client.responses.delete(j.id)
try:
    client.responses.retrieve(j.id)
    raise AssertionError("a deleted response was found")
except openai.NotFoundError:
    pass
ids.remove(j.id)
print("ids:", " ".join(ids))
print("openai responses: all checks ok")
