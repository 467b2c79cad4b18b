"""llama.cpp sampler chains built from `SamplingParams`. Greedy requests with
no penalty or grammar need no CPU chain: the runtime attaches a greedy chain to
the context (`greedy_chain`), so the argmax runs inside the decode graph."""

from __future__ import annotations

import llama_cpp as L

from slmd.request import SamplingParams

PENALTY_LAST_N = 64  # tokens the repetition penalty looks back over


class SamplerError(ValueError):
    pass


def build_chain(vocab, sp: SamplingParams):
    """A chain owned by the caller (free it with `free_chain`)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())

    def add(s) -> None:
        L.llama_sampler_chain_add(chain, s)

    if sp.grammar:
        g = L.llama_sampler_init_grammar(vocab, sp.grammar.encode(), b"root")
        if not g:
            L.llama_sampler_free(chain)
            raise SamplerError("grammar does not parse")
        add(g)
    if sp.repetition_penalty != 1.0:
        add(L.llama_sampler_init_penalties(L.llama_vocab_n_tokens(vocab), PENALTY_LAST_N, sp.repetition_penalty, 0.0, 0.0))
    if sp.temperature <= 0.0:
        add(L.llama_sampler_init_greedy())
        return chain
    if sp.top_k > 0:
        add(L.llama_sampler_init_top_k(sp.top_k))
    if sp.top_p < 1.0:
        add(L.llama_sampler_init_top_p(sp.top_p, 1))
    if sp.min_p > 0.0:
        add(L.llama_sampler_init_min_p(sp.min_p, 1))
    add(L.llama_sampler_init_temp(sp.temperature))
    add(L.llama_sampler_init_dist(sp.seed & 0xFFFFFFFF))
    return chain


def greedy_chain():
    """A one-sampler chain for `llama_set_sampler` (backend sampling needs a
    chain, and a chain can be attached only once: llama.cpp asserts on a second
    backend_init)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
    return chain


def free_chain(chain) -> None:
    if chain:
        L.llama_sampler_free(chain)


def grammar_error(vocab, grammar: str) -> str | None:
    g = L.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not g:
        return "grammar does not parse (GBNF with a `root` rule expected)"
    L.llama_sampler_free(g)
    return None
