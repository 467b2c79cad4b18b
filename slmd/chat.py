"""Prompt building: a chat rendered with the model's own chat template (the
Jinja template stored in its GGUF), then tokenized. Raw prompts skip the
template. Tokenizing happens on the asyncio side, never on the engine thread."""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment

from slmd.tokenizer import Tokenizer

# ChatML: what SmolLM2 uses, and a sane default for models without a template.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Prompter:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(tokenizer.chat_template or CHATML)

    def render(self, messages: list[dict[str, str]]) -> str:
        tok = self.tokenizer
        return self._template.render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=tok.token_bytes(tok.bos_id).decode() if tok.bos_id is not None else "",
            eos_token=tok.token_bytes(tok.eos_id).decode() if tok.eos_id is not None else "",
        )

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode_chat_text(self.render(messages))

    def encode_chat_text(self, rendered: str) -> list[int]:
        ids = self.tokenizer.encode(rendered, allow_special=True, add_bos=self.tokenizer.add_bos)
        bos = self.tokenizer.bos_id
        if len(ids) > 1 and ids[0] == bos and ids[1] == bos:  # template and tokenizer both added one
            ids = ids[1:]
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allow_special=True, add_bos=self.tokenizer.add_bos)


def _raise(message: str):
    raise ValueError(message)
