"""The Generation service: proto in, engine request, stream of deltas out.
It talks to the engine only through `EngineClient.stream`."""

from __future__ import annotations

import asyncio
import logging
import time

from llama_cpp.llama_grammar import json_schema_to_gbnf
from slmd_client._proto.slmd.v1 import common_pb2, generation_pb2

from slmd.chat import Prompter
from slmd.core import Engine
from slmd.request import Request
from slmd.server import calls, convert
from slmd.server.identity import IdentityResolver
from slmd.server.policies import AppPolicies
from slmd.server.status import failed_precondition, from_kind, invalid

log = logging.getLogger(__name__)

_BIG_PROMPT_CHARS = 16_384  # tokenize larger prompts off the event loop


class GenerationServicer:
    def __init__(self, engine: Engine, prompter: Prompter, limits: convert.Limits,
                 identity: IdentityResolver, policies: AppPolicies, context_window: int,
                 default_deterministic: bool = False, kv_pool_tokens: int = 0) -> None:
        self.policies = policies
        self.engine = engine
        self.prompter = prompter
        self.limits = limits
        self.identity = identity
        self.context_window = context_window
        self.default_deterministic = default_deterministic
        self.kv_pool_tokens = kv_pool_tokens
        # the setting that bounds a request: a pool smaller than the context is the window
        self.window_key = "engine.kv_pool_tokens" if kv_pool_tokens == context_window else "model.context_per_sequence"

    async def _prompt_ids(self, request) -> list[int]:
        which = request.WhichOneof("input")
        if which == "prompt":
            convert.check_prompt_text(request.prompt, "prompt", self.limits)
            text, encode = request.prompt, self.prompter.encode_prompt
        elif which == "chat":
            messages = convert.chat_messages(request.chat.messages)
            for i, m in enumerate(messages):
                convert.check_prompt_text(m["content"] or " ", f"chat.messages[{i}].content", self.limits)
            try:
                text = self.prompter.render(messages)
            except Exception as e:
                raise invalid(f"chat: the model's chat template rejected the messages: {str(e)[:200]}") from None
            encode = self.prompter.encode_chat_text
        else:
            raise invalid("input: set `prompt` or `chat`")
        # content=True: dropped by the log filter unless log.log_content and debug level
        log.debug("prompt text: %r", text, extra={"content": True})
        if len(text) > _BIG_PROMPT_CHARS:
            return await asyncio.get_running_loop().run_in_executor(None, encode, text)
        return encode(text)

    def _check_fits(self, ids: list[int]) -> None:
        if not ids:
            raise invalid("prompt encodes to no tokens")
        if len(ids) >= self.context_window:
            raise invalid(f"prompt is {len(ids)} tokens; the context window is {self.context_window} tokens "
                          f"per request ({self.window_key}), leaving no room for output")

    async def CountTokens(self, request, context):
        self.identity.resolve(context)
        ids = await self._prompt_ids(request)
        return generation_pb2.CountTokensResponse(
            num_tokens=len(ids), context_window=self.context_window,
            max_output_tokens=max(0, self.context_window - len(ids)))

    async def Generate(self, request, context):
        ident = self.identity.resolve(context)
        rid = convert.request_id(request.request_id)
        calls.note_request(rid, "chat" if request.WhichOneof("input") == "chat" else None)
        sampling = convert.sampling(request.sampling, self.limits, json_to_gbnf=json_schema_to_gbnf)
        if sampling.grammar is not None:
            # off the event loop: while the model is unloaded this loads a vocabulary (0.1-0.3 s)
            err = await asyncio.get_running_loop().run_in_executor(None, self.engine.validate_grammar, sampling.grammar)
            if err:
                raise invalid(f"sampling.grammar: {err}")
        if request.deterministic and self.kv_pool_tokens:
            # bit-identical to a solo run needs a KV stream of its own; a unified pool shifts logits
            raise failed_precondition("deterministic: needs separate KV streams, and this daemon shares one KV "
                                      f"pool among its sequences (engine.kv_pool_tokens={self.kv_pool_tokens})")
        prio = self.policies.priority(ident.app_id, convert.priority(request.priority))
        ids = await self._prompt_ids(request)
        self._check_fits(ids)
        remaining = context.time_remaining()
        req = Request(
            request_id=rid, prompt_ids=ids, sampling=sampling, app_id=ident.app_id, priority=prio,
            deterministic=request.deterministic or self.default_deterministic,
            deadline=(time.monotonic() + remaining) if remaining is not None else None,
            keep_alive=convert.keep_alive(request),
        )
        async for out in self.engine.stream(req):
            if out.finished and out.error_kind is not None:
                raise from_kind(out.error_kind, f"request {rid}: {out.error}", out.retry_after)
            resp = generation_pb2.GenerateResponse(request_id=rid, text=out.text, token_ids=out.token_ids)
            if out.finished:
                resp.finish_reason = convert.FINISH_TO_PROTO.get(out.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED)
                resp.usage.CopyFrom(common_pb2.Usage(
                    prompt_tokens=out.num_prompt_tokens, completion_tokens=out.num_output_tokens,
                    cached_prompt_tokens=out.num_cached_tokens, queue_seconds=out.queue_seconds,
                    time_to_first_token_seconds=out.ttft_seconds, total_seconds=out.total_seconds))
            if resp.text or resp.token_ids or out.finished:
                yield resp

