"""Stream moderation, split by concern; `guardrail.streaming` re-exports the public names.

- `bridge`: the sync/async seam (a sync guard seen as an async one, run off the event loop)
- `default`: the process-wide default guard
- `prompts`: requests from strings, chat messages or SDK message objects
- `moderator`: `StreamModerator`, one session driven chunk by chunk
- `moderate`: `moderate()` over sync and async iterables
- `adapters`: OpenAI- and Anthropic-style delta streams to text
"""
