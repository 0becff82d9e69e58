"""The wire formats, one module per direction, named after its `Mode`.

    client      key         Mode                 module (+ `_stream` for its streamed answers)
    openai      openai      OPENAI               openai.py: the body as it came (+ include_usage)
    anthropic   anthropic   ANTHROPIC            anthropic.py: the body as it came, the caller's
                                                 anthropic-version/-beta and `?beta=true`
    anthropic   openai      ANTHROPIC_ON_OPENAI  anthropic_on_openai.py: to /chat/completions and back
    openai      anthropic   OPENAI_ON_ANTHROPIC  openai_on_anthropic.py: to /messages and back
    gemini      openai      GEMINI_ON_OPENAI     gemini_on_openai.py: to /chat/completions and back
    openai      gemini      OPENAI_ON_GEMINI     openai_on_gemini.py: to /models/{m}:generateContent and back

Every direction module has the same three entries, one row of the table in gateway/relay/plan.py:
`plan(call, key, model) -> Plan` (URL, header lines, body for one key), `adapter(plan, call) ->
Adapter` (how a stream comes back), `answer(call, raw) -> (bytes, Usage | None)` (a non-streamed
answer for the client). A translating direction also has `translate_request(body)` and
`translate_answer(body, model=…)`, and its `_stream` module a `Translator` (`.feed()`, `.close()`,
`.usage`) and the `Adapter` around it. Shared pieces: shared.py (Gemini's: gemini_shared.py);
token usage: usage.py. A new format is one `ApiFormat` member, one module per direction and one
row per direction.

Translation is pure and synchronous: no I/O, no aiohttp. Built for the hot path: new dicts are
built only around what changes, large values (text, base64 data, JSON schemas) are shared, never
copied. Odd but valid input (None fields, empty content lists, empty text blocks, unknown block
types) never raises: the unknown is dropped. Input that cannot be expressed in the other format
raises `TranslationError(message, field)`; the route answers 400 `invalid_request_error`.

Decisions, Anthropic request -> OpenAI:
* `system` (string or text blocks, joined with a blank line) becomes a leading system message;
  `system`-role entries inside `messages` become system messages in place.
* Text-only content becomes a plain string (blocks joined with a blank line), which every
  OpenAI-compatible upstream accepts; content with images or documents stays a list of parts.
  Images: base64 -> data URL, url -> url. Documents: text source -> text, base64 (PDF) -> an
  OpenAI `file` part. Other sources (`file` ids) raise TranslationError.
* A user turn's `tool_result` blocks become `tool` messages first (right after the assistant's
  tool_calls), then one user message with the rest. A result's text blocks are joined;
  `is_error` has no OpenAI counterpart and is dropped. Images (and PDFs) in a result cannot go in
  a tool message: its text says "[image: attached in the next user message]" and the image
  itself goes into the user message that follows the tool messages.
* `tool_use` -> tool_calls with `arguments` = the input as JSON text. Text blocks of an
  assistant turn are joined into its content (their order relative to tool calls is lost).
* `thinking`/`redacted_thinking`, unknown block types and messages left empty are dropped.
  Roles other than user/assistant/system raise TranslationError.
* Tools: custom tools -> functions (`parameters` = input_schema); server tools (web search,
  bash, text editor: a versioned `type`) are left out, only Anthropic runs them, and a
  tool_choice that names a tool not left in raises TranslationError. tool_choice auto/any/none/
  tool -> "auto"/"required"/"none"/function; `disable_parallel_tool_use` -> `parallel_tool_calls:
  false`. No tools: neither `tools` nor `tool_choice` is sent (OpenAI refuses both).
* `max_tokens` stays `max_tokens` (understood by OpenAI-compatible upstreams; OpenAI's o-series
  want `max_completion_tokens`), `stop_sequences` -> `stop` (as is; OpenAI itself takes at most
  4). A stream gets `stream_options: {include_usage: true}`. Everything else (metadata, thinking,
  cache_control, output_config, top_k, service_tier, …) is not forwarded.
OpenAI answer -> Anthropic:
* `id` gets a `msg_` prefix (a fresh id when there is none). finish_reason stop -> end_turn
  (stop_sequence with the matched string where the upstream reports it: vLLM `stop_reason`,
  SGLang `matched_stop`), length -> max_tokens, tool_calls/function_call -> tool_use,
  content_filter -> refusal; a finish of stop or none after tool calls -> tool_use; none -> end_turn.
* Tool arguments that are not a JSON object become `{"_raw": "<the text>"}` (empty -> {}), so
  the tool reports the malformed call back to the model instead of running with nothing.
* usage: input_tokens = prompt_tokens - cached, cache_read_input_tokens = cached (when there are
  any), output_tokens = completion_tokens: Anthropic's meaning of input_tokens.
* `reasoning_content` (DeepSeek and others) is not shown; a `refusal` is shown as text.
* Streams: content blocks are sequential, so a tool-call fragment arriving after its block was
  closed (an upstream interleaving parallel calls) is dropped. `message_delta`/`message_stop`
  are sent at close(), after the usage-only chunk; no finish_reason at all -> end_turn. An
  `error` in the stream becomes Anthropic's `error` event, in our words.
OpenAI request -> Anthropic:
* system and developer messages, wherever they are, are joined into `system` (Anthropic has no
  system role inside messages). `tool` messages -> tool_result blocks; consecutive same-role
  messages are merged into one turn. A final assistant text (prefill) loses trailing whitespace.
* Images: base64 data URLs -> base64 source, http(s) -> url source; `file` parts with inline
  PDF data -> document blocks. Other URLs, file ids and audio raise TranslationError.
* `max_completion_tokens` or `max_tokens`, else 4096 (Anthropic requires one). `stop` ->
  `stop_sequences`; temperature clamped to 0..1; `parallel_tool_calls: false` ->
  `disable_parallel_tool_use`; `n` other than 1 raises. `response_format` is dropped (Anthropic
  has no JSON mode to map it to), as are stream_options, logprobs, penalties, seed, user,
  prompt_cache_key, reasoning_effort and every other OpenAI-only field.
Anthropic answer -> OpenAI:
* Text blocks joined (no separator: they are pieces of one text), tool_use -> tool_calls,
  thinking dropped; stop_reason back to finish_reason (refusal -> content_filter, pause_turn ->
  stop, model_context_window_exceeded -> length); usage prompt_tokens = input + cache read +
  cache creation, `prompt_tokens_details.cached_tokens` = cache read.

Gemini request -> OpenAI (every field read in camelCase or snake_case, as Google accepts both):
* `systemInstruction`'s text parts (joined with a blank line) become a leading system message.
  Roles user (and the old `function`) -> user, model -> assistant; others raise.
* A user turn's text parts are joined with a blank line into one string; with images or files
  they stay a list of parts. `inlineData` image/* -> image_url data URL; audio/video raise; any
  other type (PDF) -> an OpenAI `file` part. `fileData` -> image_url only for an http(s) image,
  anything else raises. Its `functionResponse` parts become `tool` messages first: tool_call_id
  = the call with the same id, else the first unanswered call of that name (none raises);
  content = the response as JSON text.
* A model turn's text parts are joined with nothing, and consecutive model turns are merged into
  one assistant message (the SDKs keep a streamed answer as a turn per chunk). `functionCall` ->
  tool_calls (its id, else `call_<n>` by its place in the request; arguments = args as JSON).
  Thought parts, images from the model, executableCode and unknown kinds are dropped.
* generationConfig: maxOutputTokens -> max_tokens, temperature, topP -> top_p, stopSequences ->
  stop, presence/frequencyPenalty, seed; candidateCount other than 1 raises; responseMimeType
  application/json -> response_format json_object, json_schema `response` with
  responseJsonSchema or responseSchema. topK, thinkingConfig, responseModalities, logprobs,
  safetySettings, cachedContent and labels are not forwarded.
* functionDeclarations -> function tools (`parametersJsonSchema` as is, else `parameters` with
  Gemini's upper-case types lowered); googleSearch, codeExecution and other Google tools are
  left out. functionCallingConfig AUTO/VALIDATED -> "auto", ANY -> "required", NONE -> "none";
  ANY with allowedFunctionNames offers only those functions (one: tool_choice names it; a name
  not declared raises). A stream gets `stream_options: {include_usage: true}`.
OpenAI answer -> Gemini:
* One candidate (index 0, role model): the text as one part (a refusal as text), then a
  functionCall part per tool call (no id: Gemini gives none by default; args not a JSON object
  -> {"_raw": text}); no parts at all -> one empty text part, as Google sends it. finish_reason
  stop/tool_calls/none -> STOP, length -> MAX_TOKENS, content_filter -> SAFETY, others -> OTHER.
  usageMetadata from usage (cached tokens as cachedContentTokenCount), modelVersion, responseId.
* Streams: text chunks as they arrive; tool calls are collected and sent whole in one chunk at
  finish_reason; the last chunk (finishReason, usageMetadata) at close(). `?alt=sse`: SSE events
  ending "\\r\\n\\r\\n"; else one JSON array, closed exactly once, an error as its last element.
OpenAI request -> Gemini:
* The model goes in the URL (`/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`),
  never in the body. System and developer messages, wherever they are, are joined into
  `systemInstruction`; user -> `user`, assistant -> `model`, consecutive same-role turns merged
  (Gemini wants them to alternate); `tool` messages -> `functionResponse` parts of a user turn,
  named after the call their tool_call_id answers (none -> TranslationError), `response` = the
  content if it is a JSON object, else `{"content": text}`.
* Images: data URLs -> `inlineData`, http(s) -> `fileData` (media type by the file extension,
  else image/jpeg); `file` parts with inline data (PDF) -> `inlineData`; wav/mp3 `input_audio` ->
  `inlineData`. File ids and other URLs raise TranslationError.
* tool_calls -> `functionCall` parts (args: the arguments as an object, `{"_raw": text}` when they
  are not one), each with Google's `thoughtSignature` placeholder: Gemini 3 refuses a replayed
  call without a signature, which an OpenAI client cannot keep. Function tools ->
  `functionDeclarations` with `parametersJsonSchema` (full JSON Schema; `parameters` refuses
  `$schema`, `additionalProperties`, …); tool_choice auto/required/none/function -> AUTO/ANY/NONE/
  ANY + `allowedFunctionNames` (a name not among the tools raises).
* generationConfig: max_completion_tokens or max_tokens -> maxOutputTokens, temperature, top_p,
  stop, presence/frequency penalty and seed as they are; response_format json_object ->
  responseMimeType application/json, json_schema -> that + responseJsonSchema; reasoning_effort
  -> thinkingBudget (none 0, minimal and low 1024, medium 8192, high 24576: the budgets of Google's
  own OpenAI compatibility). `n` other than 1 raises; stream_options, logprobs, user,
  parallel_tool_calls, metadata and every other OpenAI-only field are not forwarded.
Gemini answer -> OpenAI:
* The first candidate only. Text parts joined (thought parts dropped), functionCall parts ->
  tool_calls (Gemini's id, else a fresh `call_` one; arguments = args as JSON text).
  finishReason STOP -> stop (tool_calls after function calls), MAX_TOKENS -> length, SAFETY,
  RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, IMAGE_SAFETY -> content_filter, others -> stop;
  a prompt blocked before any candidate (`promptFeedback.blockReason`) -> content_filter with
  empty content. id = responseId, model = modelVersion; usage from usageMetadata (thoughts count
  as completion tokens, cachedContentTokenCount as cached).
* Streams: each chunk's parts become deltas as they come (a function call arrives whole: one
  tool_calls delta with its full arguments); usageMetadata is cumulative, the last one counts.
  An `error` object in the stream fails the attempt before the commit point, and after it ends
  the stream with an OpenAI error event.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """How one call reaches one key: the client's format on the key's."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    ANTHROPIC_ON_OPENAI = "anthropic_on_openai"
    OPENAI_ON_ANTHROPIC = "openai_on_anthropic"
    GEMINI = "gemini"
    GEMINI_ON_OPENAI = "gemini_on_openai"
    OPENAI_ON_GEMINI = "openai_on_gemini"
    GEMINI_ON_ANTHROPIC = "gemini_on_anthropic"  # through OpenAI's shape: both translations composed
    ANTHROPIC_ON_GEMINI = "anthropic_on_gemini"
