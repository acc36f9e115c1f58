"""Tool calling, structured output, logprobs and n with the official `openai` client over the
socket (tests/tools.rs, on the Qwen2.5-Coder test model).

Usage: python tests/openai_tools.py SOCKET MODEL. Prints one line per check; exits non-zero on
the first failure. Arguments and answers are validated with the `jsonschema` package, an
implementation independent of the daemon's.
"""
import json
import sys

import httpx
import jsonschema
import openai
import pydantic

sock, model = sys.argv[1], sys.argv[2]
http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=600)
client = openai.OpenAI(base_url="http://inhouse/v1", api_key="not-used", http_client=http)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
tools = [
    {"type": "function", "function": {"name": "get_weather",
     "description": "The current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time",
     "description": "The current time in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"], "additionalProperties": False}}},
]
ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]

# 1. tool_choice="required": a call whose arguments validate against the tool's schema.
r = client.chat.completions.create(model=model, messages=ask, tools=tools,
                                   tool_choice="required", temperature=0, max_tokens=96)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
calls = choice.message.tool_calls
assert calls, choice
call = calls[0]
assert call.id.startswith("call_"), call
assert call.type == "function"
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
for c in calls:
    jsonschema.validate(json.loads(c.function.arguments), schemas[c.function.name])
print("required: call ok:", call.function.name, call.function.arguments)

# 2. The same, streamed: the deltas reassemble to the same call.
names, args, ids = {}, {}, {}
finish = None
for chunk in client.chat.completions.create(model=model, messages=ask, tools=tools,
                                            tool_choice="required", temperature=0,
                                            max_tokens=96, stream=True):
    if not chunk.choices:
        continue
    c = chunk.choices[0]
    for d in c.delta.tool_calls or []:
        if d.id:
            ids[d.index] = d.id
        if d.function and d.function.name:
            names[d.index] = d.function.name
        if d.function and d.function.arguments:
            args[d.index] = args.get(d.index, "") + d.function.arguments
    finish = c.finish_reason or finish
assert finish == "tool_calls", finish
assert len(names) == len(calls), (names, calls)
for i, c in enumerate(calls):
    assert names[i] == c.function.name, (names, c)
    assert json.loads(args[i]) == json.loads(c.function.arguments), (args, c)
    assert ids[i].startswith("call_")
print("streamed tool-call deltas reassemble ok")

# 3. A named tool: that one is called.
r = client.chat.completions.create(
    model=model, messages=ask, tools=tools, temperature=0, max_tokens=96,
    tool_choice={"type": "function", "function": {"name": "get_time"}})
named = r.choices[0].message.tool_calls
assert named and all(c.function.name == "get_time" for c in named), r
jsonschema.validate(json.loads(named[0].function.arguments), schemas["get_time"])
print("named tool ok:", named[0].function.arguments)

# 4. The round trip: the call, the tool's result, then a text answer that uses it.
history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id,
     "content": json.dumps({"temperature": 21, "unit": "celsius"})},
]
# tool_choice="none" asks for the answer now (the 0.5B model otherwise tends to call again).
final = client.chat.completions.create(model=model, messages=history, tools=tools,
                                       tool_choice="none", temperature=0, max_tokens=64)
fc = final.choices[0]
assert fc.finish_reason in ("stop", "length"), fc
assert not fc.message.tool_calls, fc
assert fc.message.content and "21" in fc.message.content, fc.message.content
print("round trip ok:", repr(fc.message.content))


# 5. Structured output: the SDK's parse() with a pydantic model.
class City(pydantic.BaseModel):
    name: str
    country: str
    population_millions: float


parsed = client.chat.completions.parse(
    model=model, response_format=City, temperature=0, max_tokens=96,
    messages=[{"role": "user", "content": "Describe the city of Lyon as JSON."}])
city = parsed.choices[0].message.parsed
assert isinstance(city, City), parsed
print("parse() ok:", city)

# 6. 30 sampled answers at temperature 1 to a json_schema request, all valid (n = 6 per call).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20},
                      "maxItems": 3},
        "role": {"enum": ["engineer", "manager", "analyst"]},
    },
    "required": ["name", "age", "languages", "role"],
    "additionalProperties": False,
}
valid = 0
for seed in range(5):
    r = client.chat.completions.create(
        model=model, temperature=1, seed=seed, n=6, max_tokens=120,
        messages=[{"role": "user", "content": "Invent an employee of a software company."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert len(r.choices) == 6, r
    for c in r.choices:
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.message.content), PERSON)
        valid += 1
assert valid == 30, valid
print("30 sampled json_schema answers valid")

# 7. logprobs: present, <= 0, top_logprobs sorted and holding the sampled token (greedy).
r = client.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=12,
                                   logprobs=True, top_logprobs=5)
content = r.choices[0].logprobs.content
assert content, r
for t in content:
    assert t.logprob <= 0, t
    tops = [a.logprob for a in t.top_logprobs]
    assert len(tops) == 5 and tops == sorted(tops, reverse=True), t
    assert t.token in [a.token for a in t.top_logprobs], t
    assert t.token == t.top_logprobs[0].token, t
    assert bytes(t.bytes).decode("utf-8", "replace") == t.token, t
assert "".join(t.token for t in content) == r.choices[0].message.content, r
streamed = []
for chunk in client.chat.completions.create(model=model, messages=ask, temperature=0,
                                            max_tokens=12, logprobs=True, top_logprobs=2,
                                            stream=True):
    if chunk.choices and chunk.choices[0].logprobs:
        streamed += chunk.choices[0].logprobs.content
assert [t.token for t in streamed] == [t.token for t in content], (streamed, content)
print("logprobs ok:", len(content), "tokens")

# 8. n: identical choices greedily, different ones sampled with a seed.
r = client.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=16, n=3)
texts = [c.message.content for c in r.choices]
assert [c.index for c in r.choices] == [0, 1, 2], r
assert len(set(texts)) == 1, texts
r = client.chat.completions.create(model=model, messages=ask, temperature=1, seed=7,
                                   max_tokens=16, n=3)
texts = [c.message.content for c in r.choices]
assert len(set(texts)) > 1, texts
assert r.usage.completion_tokens >= 3, r.usage  # every choice counts
print("n ok:", texts)

print("openai tools: all checks ok")
