"""Tools and `format` with the official `ollama` package over the socket (tests/tools.rs).

Usage: python tests/ollama_tools.py SOCKET MODEL. Exits non-zero on the first failure.
"""
import json
import sys

import httpx
import jsonschema
import ollama

socket, model = sys.argv[1], sys.argv[2]
client = ollama.Client(host="http://inhouse", transport=httpx.HTTPTransport(uds=socket),
                       timeout=600)
options = {"temperature": 0, "seed": 1, "num_predict": 96}

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string"},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
tools = [{"type": "function", "function": {"name": "get_weather",
          "description": "The current weather in a city", "parameters": WEATHER}}]
ask = [{"role": "user", "content": "What is the weather like in Paris today? Use the tool."}]

r = client.chat(model=model, messages=ask, tools=tools, options=options)
calls = r.message.tool_calls
assert calls, r
assert calls[0].function.name == "get_weather", calls
jsonschema.validate(dict(calls[0].function.arguments), WEATHER)
print("ollama tool call ok:", calls[0].function.name, dict(calls[0].function.arguments))

parts = list(client.chat(model=model, messages=ask, tools=tools, options=options, stream=True))
streamed = [c for p in parts for c in (p.message.tool_calls or [])]
assert [c.function.name for c in streamed] == [c.function.name for c in calls], parts
assert parts[-1].done
print("ollama streamed tool call ok")

history = ask + [
    {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": dict(calls[0].function.arguments)}}]},
    {"role": "tool", "tool_name": "get_weather",
     "content": json.dumps({"temperature": 21, "unit": "celsius", "sky": "sunny"})},
]
final = client.chat(model=model, messages=history, tools=tools, options=options)
assert final.message.content and not final.message.tool_calls, final
print("ollama round trip ok:", repr(final.message.content))

CITY = {"type": "object",
        "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                       "population_millions": {"type": "number"}},
        "required": ["name", "country", "population_millions"], "additionalProperties": False}
# Room for the whole object: a schema-constrained answer cut by num_predict is not valid JSON.
r = client.chat(model=model, options={**options, "num_predict": 256}, format=CITY,
                messages=[{"role": "user", "content":
                                      "Describe Lyon: its name, country and population."}])
jsonschema.validate(json.loads(r.message.content), CITY)
print("ollama format schema ok:", r.message.content)

r = client.chat(model=model, options=options, format="json",
                messages=[{"role": "user", "content": "List three colours."}])
assert isinstance(json.loads(r.message.content), dict), r.message.content
print("ollama format json ok")

print("ollama tools: all checks ok")
