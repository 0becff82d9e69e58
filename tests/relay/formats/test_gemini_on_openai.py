"""Mode.GEMINI_ON_OPENAI: a Gemini request as an OpenAI one (exact dicts, field-named refusals),
an OpenAI answer as a Gemini response, and OpenAI streams as Gemini chunks, framed as SSE or as
one JSON array."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.apiformat import ApiFormat
from gateway.relay import plan
from gateway.relay.call import Call
from gateway.relay.formats import Mode, gemini_on_openai, gemini_on_openai_stream
from gateway.relay.formats.shared import BROKE, STREAM_ERROR, STREAM_ONLY_ERROR, TranslationError
from gateway.relay.keyindex import PoolKey
from gateway.store.tokens import Caller
from tests.support.wire import B64, TEXT_THEN_TOOLS, chunk

CALLER = Caller("t1", "u1", "bob", 1, False)

# --- 1. Gemini request -> OpenAI ----------------------------------------------------------------

USER_HI = {"role": "user", "parts": [{"text": "Hi"}]}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "city": {"type": "STRING", "description": "City name"},
            "days": {"type": "ARRAY", "items": {"type": "INTEGER"}},
            "unit": {"type": "string", "enum": ["C", "F"]},
        },
        "required": ["city"],
    },
}
WEATHER_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "array", "items": {"type": "integer"}},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {"tz": {"type": "string"}}}}
TIME_OPENAI = {"type": "function", "function": {"name": "get_time", "parameters": TIME["parametersJsonSchema"]}}

G2O_REQUESTS = [
    (
        "text, a role-less turn is the user's, no model in the body",
        {"contents": [{"parts": [{"text": "Hi"}]}]},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ),
    (
        "system instruction, several text parts joined, model turn, thoughts dropped",
        {
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}, {"text": "there"}]},
                {"role": "model", "parts": [{"text": "ponder", "thought": True}, {"text": "Hi "}, {"text": "you"}]},
                {"role": "user", "parts": [{"text": "Bye", "thought": False}]},
            ],
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief.\n\nBe kind."},
                {"role": "user", "content": "Hello\n\nthere"},
                {"role": "assistant", "content": "Hi you"},
                {"role": "user", "content": "Bye"},
            ]
        },
    ),
    (
        "consecutive model turns (a streamed answer in the SDK's history) are one message",
        {
            "contents": [
                USER_HI,
                {"role": "model", "parts": [{"text": "Hel"}]},
                {"role": "model", "parts": [{"text": "lo"}]},
            ]
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ),
    (
        "images inline and by URI, a PDF and a text file as file parts",
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "Look:"},
                        {"inlineData": {"mimeType": "image/png", "data": B64}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/a.jpg"}},
                        {"fileData": {"fileUri": "http://x.test/b.PNG"}},
                        {"inline_data": {"mime_type": "application/pdf", "data": "JVBERi0="}},
                        {"inlineData": {"mimeType": "text/csv", "data": "YSxi", "displayName": "t.csv"}},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                        {"type": "image_url", "image_url": {"url": "http://x.test/b.PNG"}},
                        {
                            "type": "file",
                            "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                        },
                        {"type": "file", "file": {"filename": "t.csv", "file_data": "data:text/csv;base64,YSxi"}},
                    ],
                }
            ]
        },
    ),
    (
        "function declarations: upper-case types lowered, JSON schema as is, Google tools left out",
        {
            "contents": [USER_HI],
            "tools": [
                {"functionDeclarations": [WEATHER, {"name": "ping"}]},
                {"googleSearch": {}},
                {"codeExecution": {}},
            ],
        },
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "tools": [
                WEATHER_OPENAI,
                {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
            ],
        },
    ),
    (
        "only Google's tools: no tools and no tool_choice",
        {
            "contents": [USER_HI],
            "tools": [{"googleSearch": {}}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        },
        {"messages": [{"role": "user", "content": "Hi"}]},
    ),
    (
        "function call and response round: ids generated by place, matched by name in order",
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
                {
                    "role": "model",
                    "parts": [
                        {"text": "Checking."},
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2ln",
                        },
                        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
                        {"functionCall": {"name": "get_time"}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
                        {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}},
                        {"functionResponse": {"name": "get_weather", "response": {"error": "no data"}}},
                        {"text": "thanks"},
                    ],
                },
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                        {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_3", "content": '{"output":"noon"}'},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"output":"sunny"}'},
                {"role": "tool", "tool_call_id": "call_2", "content": '{"error":"no data"}'},
                {"role": "user", "content": "thanks"},
            ]
        },
    ),
    (
        "calls with ids: responses matched by id, whatever their order",
        {
            "contents": [
                {
                    "role": "model",
                    "parts": [
                        {"function_call": {"id": "a1", "name": "f", "args": {"n": 1}}},
                        {"functionCall": {"id": "a2", "name": "f", "args": {"n": 2}}},
                    ],
                },
                {
                    "role": "function",
                    "parts": [
                        {"functionResponse": {"id": "a2", "name": "f", "response": {"r": 2}}},
                        {"function_response": {"id": "a1", "name": "f", "response": {"r": 1}}},
                    ],
                },
            ]
        },
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "a1", "type": "function", "function": {"name": "f", "arguments": '{"n":1}'}},
                        {"id": "a2", "type": "function", "function": {"name": "f", "arguments": '{"n":2}'}},
                    ],
                },
                {"role": "tool", "tool_call_id": "a2", "content": '{"r":2}'},
                {"role": "tool", "tool_call_id": "a1", "content": '{"r":1}'},
            ]
        },
    ),
    (
        "generation config, camelCase",
        {
            "contents": [USER_HI],
            "generationConfig": {
                "maxOutputTokens": 100,
                "temperature": 0.5,
                "topP": 0.9,
                "topK": 40,
                "stopSequences": ["END"],
                "candidateCount": 1,
                "presencePenalty": 0.1,
                "frequencyPenalty": 0.2,
                "seed": 7,
                "thinkingConfig": {"thinkingBudget": 0},
                "responseMimeType": "application/json",
            },
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "cachedContent": "cachedContents/x",
            "labels": {"a": "b"},
        },
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "seed": 7,
            "stop": ["END"],
            "response_format": {"type": "json_object"},
        },
    ),
    (
        "generation config and system instruction, snake_case; response_schema lowered",
        {
            "system_instruction": {"parts": [{"text": "Sys"}]},
            "contents": [USER_HI],
            "generation_config": {
                "max_output_tokens": 5,
                "top_p": 1,
                "stop_sequences": ["x"],
                "response_mime_type": "application/json",
                "response_schema": {"type": "OBJECT", "properties": {"a": {"type": "NUMBER"}}},
            },
        },
        {
            "messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}],
            "max_tokens": 5,
            "top_p": 1,
            "stop": ["x"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "response",
                    "schema": {"type": "object", "properties": {"a": {"type": "number"}}},
                },
            },
        },
    ),
    (
        "responseJsonSchema goes as it is",
        {
            "contents": [USER_HI],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": {"type": "array"}},
        },
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "array"}},
            },
        },
    ),
    (
        "odd input dropped: empty parts, no parts, unknown kinds, empty text, a model's image",
        {
            "contents": [
                {"role": "user", "parts": []},
                {"role": "model"},
                {"role": "user", "parts": [{"text": ""}, {"executableCode": {"code": "1"}}, {"videoMetadata": {}}]},
                {
                    "role": "model",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": B64}}, {"functionCall": "x"}],
                },
                {"role": "user", "parts": [{"text": "Hi"}, {"functionCall": {"name": "f"}}]},
            ],
            "generationConfig": {"maxOutputTokens": 0, "temperature": True, "responseMimeType": "text/plain"},
            "tools": [{"functionDeclarations": "nope"}, "x"],
        },
        {"messages": [{"role": "user", "content": "Hi"}]},
    ),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in G2O_REQUESTS], ids=[c[0] for c in G2O_REQUESTS])
def test_gemini_request_to_openai(body: dict, expected: dict) -> None:
    before = copy.deepcopy(body)
    assert gemini_on_openai.translate_request(body) == expected
    assert body == before  # the client's body is never changed


TOOL_CHOICES = [
    ("AUTO", None, "auto", ["get_weather", "get_time"]),
    ("auto", None, "auto", ["get_weather", "get_time"]),
    ("VALIDATED", None, "auto", ["get_weather", "get_time"]),
    ("ANY", None, "required", ["get_weather", "get_time"]),
    ("NONE", None, "none", ["get_weather", "get_time"]),
    ("MODE_UNSPECIFIED", None, None, ["get_weather", "get_time"]),
    ("ANY", ["get_time"], {"type": "function", "function": {"name": "get_time"}}, ["get_time"]),
    ("ANY", ["get_time", "get_weather"], "required", ["get_weather", "get_time"]),
    ("AUTO", ["get_time"], "auto", ["get_weather", "get_time"]),
]


@pytest.mark.parametrize("mode, names, choice, offered", TOOL_CHOICES)
def test_tool_config_modes(mode: str, names: list | None, choice: Any, offered: list) -> None:
    config: dict[str, Any] = {"mode": mode}
    if names is not None:
        config["allowedFunctionNames"] = names
    body = {
        "contents": [USER_HI],
        "tools": [{"functionDeclarations": [WEATHER, TIME]}],
        "toolConfig": {"functionCallingConfig": config},
    }
    out = gemini_on_openai.translate_request(body)
    assert out.get("tool_choice") == choice
    assert [t["function"]["name"] for t in out["tools"]] == offered
    snake = {
        "contents": [USER_HI],
        "tools": [{"function_declarations": [WEATHER, TIME]}],
        "tool_config": {"function_calling_config": config},
    }
    assert gemini_on_openai.translate_request(snake) == out


def test_large_values_and_unchanged_schemas_are_shared() -> None:
    data = B64 * 1000
    body = {
        "contents": [{"parts": [{"text": "x" * 10_000}, {"inlineData": {"mimeType": "image/png", "data": data}}]}],
        "tools": [{"functionDeclarations": [TIME, WEATHER]}],
    }
    out = gemini_on_openai.translate_request(body)
    assert out["messages"][0]["content"][0]["text"] is body["contents"][0]["parts"][0]["text"]
    assert out["tools"][0]["function"]["parameters"] is TIME["parametersJsonSchema"]
    lowered = out["tools"][1]["function"]["parameters"]
    assert lowered["properties"]["unit"] is WEATHER["parameters"]["properties"]["unit"]  # already lower case
    assert lowered["required"] is WEATHER["parameters"]["required"]


def test_lower_types_reaches_every_nested_schema() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"type": {"type": "STRING"}, "v": {"anyOf": [{"type": "NUMBER"}, {"type": "NULL"}]}},
        "$defs": {"d": {"type": ["STRING", "NULL"]}},
        "additionalProperties": {"type": "BOOLEAN"},
        "enum": [{"type": "KEEP"}],
    }
    assert gemini_on_openai.lower_types(schema) == {
        "type": "object",
        "properties": {"type": {"type": "string"}, "v": {"anyOf": [{"type": "number"}, {"type": "null"}]}},
        "$defs": {"d": {"type": ["string", "null"]}},
        "additionalProperties": {"type": "boolean"},
        "enum": [{"type": "KEEP"}],  # a value, not a schema
    }
    plain = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert gemini_on_openai.lower_types(plain) is plain


def gemini_call(body: dict, *, stream: bool, sse: bool = False) -> Call:
    path = "/v1beta/models/gemini-2.5-pro:" + ("streamGenerateContent" if stream else "generateContent")
    c = Call(
        make_mocked_request("POST", path),
        CALLER,
        "/models",
        "gemini-2.5-pro",
        stream,
        orjson.dumps(body),
        body,
        False,
        0.0,
    )
    c.client, c.gemini_sse = ApiFormat.GEMINI, sse
    return c


def test_the_plan_names_the_model_and_asks_a_stream_for_its_usage() -> None:
    key = PoolKey(
        "k1",
        "o1",
        "alice",
        "https://up.example/v1",
        "sk-donor",
        ("gemini-2.5-pro",),
        100,
        True,
        False,
        ApiFormat.OPENAI,
        {},
    )
    c = gemini_call({"contents": [USER_HI]}, stream=True)
    route = plan.plan(c, key, "gemini-2.5-pro")
    assert route.mode == Mode.GEMINI_ON_OPENAI and str(route.url) == "https://up.example/v1/chat/completions"
    assert route.head == key.head[True] and b"sk-donor" in route.head
    assert orjson.loads(route.body) == {
        "model": "gemini-2.5-pro",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert plan.plan(c, key, "gemini-2.5-pro").body is route.body  # translated once per call
    assert orjson.loads(plan.plan(c, key, "gpt-4o").body)["model"] == "gpt-4o"  # another name on this key
    assert "stream" not in orjson.loads(plan.plan(gemini_call({"contents": [USER_HI]}, stream=False), key, "m").body)
    adapter = plan.adapter(route, gemini_call({"contents": []}, stream=True, sse=True))
    assert isinstance(adapter, gemini_on_openai_stream.Adapter)
    assert adapter.take(sse_bytes([chunk({"content": "Hi"})])).startswith(b"data: ")


G2O_ERRORS = [
    ("no contents", {}, "contents"),
    ("contents not a list", {"contents": {"parts": []}}, "contents"),
    ("a content not an object", {"contents": ["hi"]}, "contents[0]"),
    ("an unknown role", {"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ("parts not a list", {"contents": [{"role": "user", "parts": "hi"}]}, "contents[0].parts"),
    ("a part not an object", {"contents": [{"parts": [{"text": "a"}, "b"]}]}, "contents[0].parts[1]"),
    (
        "inline data without a media type",
        {"contents": [USER_HI, {"parts": [{"inlineData": {"data": B64}}]}]},
        "contents[1].parts[0].inlineData.mimeType",
    ),
    (
        "inline data that is not text",
        {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": 5}}]}]},
        "contents[0].parts[0].inlineData.data",
    ),
    (
        "audio",
        {"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": B64}}]}]},
        "contents[0].parts[0].inlineData",
    ),
    (
        "a file URI that is not an http(s) image",
        {"contents": [{"parts": [{"fileData": {"mimeType": "application/pdf", "fileUri": "https://x.test/a.pdf"}}]}]},
        "contents[0].parts[0].fileData",
    ),
    (
        "a Files API URI",
        {"contents": [{"parts": [{"file_data": {"mime_type": "image/png", "file_uri": "files/abc"}}]}]},
        "contents[0].parts[0].fileData",
    ),
    (
        "a function response with no call before it",
        {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
        "contents[0].parts[0].functionResponse",
    ),
    (
        "a function response answering a call twice",
        {
            "contents": [
                {"role": "model", "parts": [{"functionCall": {"name": "f"}}]},
                {"parts": [{"functionResponse": {"name": "f"}}, {"functionResponse": {"name": "f"}}]},
            ]
        },
        "contents[1].parts[1].functionResponse",
    ),
    ("a system instruction not an object", {"contents": [], "systemInstruction": "x"}, "systemInstruction"),
    ("generationConfig not an object", {"contents": [], "generationConfig": []}, "generationConfig"),
    (
        "several candidates",
        {"contents": [], "generationConfig": {"candidateCount": 2}},
        "generationConfig.candidateCount",
    ),
    ("tools not a list", {"contents": [], "tools": {}}, "tools"),
    (
        "a declaration without a name",
        {"contents": [], "tools": [{"functionDeclarations": [TIME, {"description": "x"}]}]},
        "tools[0].functionDeclarations[1]",
    ),
    (
        "an allowed function that is not declared",
        {
            "contents": [],
            "tools": [{"functionDeclarations": [TIME]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["nope"]}},
        },
        "toolConfig.functionCallingConfig.allowedFunctionNames",
    ),
]


@pytest.mark.parametrize("body, field", [c[1:] for c in G2O_ERRORS], ids=[c[0] for c in G2O_ERRORS])
def test_gemini_request_errors(body: dict, field: str) -> None:
    with pytest.raises(TranslationError) as caught:
        gemini_on_openai.translate_request(body)
    assert caught.value.field == field
    assert caught.value.message.startswith(field + ":")


# --- 2. OpenAI answer -> Gemini -----------------------------------------------------------------


def completion(message: dict, finish: str | None = "stop", usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "model": "gpt-x",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


USAGE_13 = {"promptTokenCount": 10, "candidatesTokenCount": 3, "totalTokenCount": 13}


def test_text_answer() -> None:
    assert gemini_on_openai.translate_answer(completion({"content": "Hello"}), model="gemini-2.5-pro") == {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "Hello"}]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": USAGE_13,
        "modelVersion": "gpt-x",
        "responseId": "chatcmpl-9",
    }


def test_tool_call_answer_with_cached_tokens() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}},
        {"id": "call_3", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]
    usage = {"prompt_tokens": 30, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 20}}
    answer = gemini_on_openai.translate_answer(
        completion({"content": "Sure.", "tool_calls": calls}, "tool_calls", usage)
    )
    assert answer["candidates"] == [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Sure."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "f", "args": {"_raw": "[1, 2]"}}},
                    {"functionCall": {"name": "g", "args": {}}},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ]
    assert answer["usageMetadata"] == {
        "promptTokenCount": 30,
        "candidatesTokenCount": 5,
        "totalTokenCount": 35,
        "cachedContentTokenCount": 20,
    }


@pytest.mark.parametrize(
    "finish, reason",
    [
        ("stop", "STOP"),
        ("length", "MAX_TOKENS"),
        ("content_filter", "SAFETY"),
        ("tool_calls", "STOP"),
        (None, "STOP"),
        ("odd", "OTHER"),
    ],
)
def test_finish_reasons(finish: str | None, reason: str) -> None:
    answer = gemini_on_openai.translate_answer(completion({"content": "x"}, finish))
    assert answer["candidates"][0]["finishReason"] == reason


def test_odd_answers() -> None:
    answer = gemini_on_openai.translate_answer({}, model="gemini-x")
    assert answer["candidates"] == [
        {"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}
    ]
    assert answer["usageMetadata"] == {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}
    assert answer["modelVersion"] == "gemini-x" and len(answer["responseId"]) == 24
    refusal = gemini_on_openai.translate_answer(completion({"content": None, "refusal": "No."}, "content_filter"))
    assert refusal["candidates"][0]["content"]["parts"] == [{"text": "No."}]
    legacy = gemini_on_openai.translate_answer(
        completion({"content": None, "function_call": {"name": "f", "arguments": '{"a":1}'}}, "function_call")
    )
    assert legacy["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "f", "args": {"a": 1}}}]


def test_answer_bytes_and_usage() -> None:
    class FakeCall:
        model = "gemini-2.5-flash"

    raw = orjson.dumps(completion({"content": "Hi"}))
    data, usage = gemini_on_openai.answer(FakeCall(), raw)  # type: ignore[arg-type]
    assert orjson.loads(data)["candidates"][0]["content"]["parts"] == [{"text": "Hi"}]
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (10, 3)
    with pytest.raises(ValueError):
        gemini_on_openai.answer(FakeCall(), b"[1]")  # type: ignore[arg-type]


# --- 3. OpenAI stream -> Gemini chunks ----------------------------------------------------------

# Claude Code's sample with the second call starting before the first one's last fragment: still assembled.
TOOL_STREAM = [*TEXT_THEN_TOOLS[:6], TEXT_THEN_TOOLS[7], TEXT_THEN_TOOLS[6], *TEXT_THEN_TOOLS[8:]]
assert TOOL_STREAM[6]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1


def text_chunk(text: str) -> dict:
    content = {"role": "model", "parts": [{"text": text}]}
    return {"candidates": [{"content": content, "index": 0}], "modelVersion": "gpt-x", "responseId": "chatcmpl-1"}


def test_stream_text_then_tools_exact() -> None:
    conv = gemini_on_openai_stream.Translator(model="gemini-2.5-pro")
    out = [c for ch in TOOL_STREAM for c in conv.feed(ch)] + conv.close()
    assert conv.close() == [] and conv.feed(TOOL_STREAM[1]) == []
    calls = [
        {"functionCall": {"name": "Bash", "args": {"command": "ls"}}},
        {"functionCall": {"name": "Read", "args": {}}},
    ]
    assert out == [
        text_chunk("Let me "),
        text_chunk("check."),
        {
            "candidates": [{"content": {"role": "model", "parts": calls}, "index": 0}],
            "modelVersion": "gpt-x",
            "responseId": "chatcmpl-1",
        },
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {
                "promptTokenCount": 30,
                "candidatesTokenCount": 12,
                "totalTokenCount": 42,
                "cachedContentTokenCount": 10,
            },
            "modelVersion": "gpt-x",
            "responseId": "chatcmpl-1",
        },
    ]
    assert conv.usage is not None and conv.usage.cache_read_tokens == 10


def test_stream_without_finish_reason_sends_the_calls_in_the_last_chunk() -> None:
    conv = gemini_on_openai_stream.Translator(model="gemini-x")
    fed = conv.feed(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a"'}}]}}]}
    )
    fed += conv.feed(
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "length"}
            ]
        }
    )
    assert fed == [
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "index": 0}
            ],
            "modelVersion": "gemini-x",
            "responseId": conv.response_id,
        }
    ]
    conv2 = gemini_on_openai_stream.Translator(model="gemini-x")
    conv2.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}}]})
    (last,) = conv2.close()
    assert last["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "f", "args": {}}}]
    assert last["candidates"][0]["finishReason"] == "STOP" and last["modelVersion"] == "gemini-x"
    assert last["usageMetadata"] == {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}
    (length,) = conv.close()
    assert length["candidates"][0]["finishReason"] == "MAX_TOKENS"


def sse_bytes(chunks: list[Any]) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else orjson.dumps(c)) + b"\n\n" for c in chunks)


def adapt(
    sse: bool, chunks: list[Any], done: bool = True, split: int = 3
) -> tuple[gemini_on_openai_stream.Adapter, bytes]:
    adapter = gemini_on_openai_stream.Adapter(model="gemini-2.5-pro", sse=sse)
    events = [sse_bytes([c]) for c in chunks] + ([b"data: [DONE]\n\n"] if done else [])
    out = b""
    for i in range(0, len(events), split):
        out += adapter.take(b"".join(events[i : i + split]))
        if adapter.failed or adapter.broken:
            return adapter, out
    return adapter, out + adapter.close(b"")


def sse_chunks(data: bytes) -> list[dict]:
    assert data.endswith(b"\r\n\r\n")
    events = data.split(b"\r\n\r\n")[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    return [orjson.loads(e[6:]) for e in events]


def test_adapter_sse_framing() -> None:
    adapter, data = adapt(True, TOOL_STREAM)
    chunks = sse_chunks(data)
    assert chunks[:2] == [text_chunk("Let me "), text_chunk("check.")]
    assert [p["functionCall"]["name"] for p in chunks[2]["candidates"][0]["content"]["parts"]] == ["Bash", "Read"]
    assert chunks[3]["candidates"][0]["finishReason"] == "STOP" and chunks[3]["usageMetadata"]["totalTokenCount"] == 42
    assert adapter.committed and adapter.chunks == len(TOOL_STREAM) + 1
    usage = adapter.recorded_usage()
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (20, 12, 10)


@pytest.mark.parametrize("split", [1, 2, 100])
def test_adapter_array_framing_is_one_json_array(split: int) -> None:
    _, sse_data = adapt(True, TOOL_STREAM)
    adapter, data = adapt(False, TOOL_STREAM, split=split)
    assert data.startswith(b"[{") and data.endswith(b"}]") and data.count(b",\r\n{") == 3
    assert orjson.loads(data) == sse_chunks(sse_data)
    assert adapter.close(b"") == b"" and adapter.error("late") == b""  # closed exactly once


def test_adapter_array_closed_without_done() -> None:
    _, data = adapt(False, [chunk({"content": "Hi"})], done=False)
    assert [c["candidates"][0].get("finishReason") for c in orjson.loads(data)] == [None, "STOP"]


@pytest.mark.parametrize("sse", [True, False])
def test_error_mid_stream_ends_the_stream(sse: bool) -> None:
    adapter, data = adapt(
        sse, [chunk({"content": "Hi"}), {"error": {"message": "secret upstream text"}}, chunk({"content": "more"})]
    )
    assert adapter.broken and not adapter.failed
    expected = [text_chunk("Hi"), {"error": {"code": 500, "message": BROKE, "status": "INTERNAL"}}]
    assert (sse_chunks(data) if sse else orjson.loads(data)) == expected
    assert b"secret" not in data
    assert adapter.close(b"") == b""  # nothing after the error, the array already closed


@pytest.mark.parametrize("sse", [True, False])
def test_relay_error_after_commit(sse: bool) -> None:
    """The relay's own error (a timeout, a lost connection): the stream ends with it, the array closed."""
    adapter = gemini_on_openai_stream.Adapter(model="g", sse=sse)
    data = adapter.take(sse_bytes([chunk({"content": "Hi"})]))
    data += adapter.error("The upstream stream broke off (timed out).")
    parsed = sse_chunks(data) if sse else orjson.loads(data)
    assert parsed[-1] == {
        "error": {"code": 500, "message": "The upstream stream broke off (timed out).", "status": "INTERNAL"}
    }
    assert len(parsed) == 2
    assert adapter.take(sse_bytes([chunk({"content": "late"})])) == b""


def test_error_before_content_fails_the_attempt() -> None:
    adapter, data = adapt(False, [chunk({"role": "assistant", "content": ""}), {"error": {"message": "overloaded"}}])
    assert adapter.failed == STREAM_ONLY_ERROR and not adapter.committed and not adapter.broken
    assert data == b""


def test_a_stream_with_nothing_in_it_is_not_committed() -> None:
    adapter, data = adapt(False, [chunk({"role": "assistant"}), chunk({}, "stop")])
    assert not adapter.committed
    assert orjson.loads(data)[0]["candidates"][0]["finishReason"] == "STOP"


def test_translator_reports_an_error_chunk_in_our_words() -> None:
    conv = gemini_on_openai_stream.Translator()
    assert conv.feed({"error": {"message": "upstream words"}}) == [
        {"error": {"code": 500, "message": STREAM_ERROR, "status": "INTERNAL"}}
    ]
    assert conv.close() == []
