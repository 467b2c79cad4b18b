"""Deterministic, varied test text for the tokenizer parity test (no network, no files of its own).

`corpus_pieces()` returns pieces of a few KB each, well over 1 MB together: Python
stdlib source (read at run time, so it is fixed for a given interpreter), prose and
code in several languages, JSON, many scripts, emoji sequences, combining marks, long
numbers, odd whitespace, special-token strings, and a sweep over Unicode code points
(including ones assigned after Unicode 15.1 and bytes the vocabulary cannot encode).
"""

from __future__ import annotations

import inspect
import json
import random

PIECE_CHARS = 4096
_SEED = 20240611

_PROSE = (
    "The quick brown fox jumps over the lazy dog. It's a test; they're sure we'll see what I'd "
    "done, and you've got to admit it's 'quoted' — or \"double-quoted\"… isn't it?",
    "In 1969, Apollo 11 landed on the Moon at 20:17 UTC; 3.14159265358979 is π, e≈2.718281828.",
    "Prices: $1,299.99 vs €1.299,99 (≈ ¥180,000); growth of +12.5% YoY, −3‰ margin, #1 rank @ 09:30.",
    "Dr. O'Neill's e-mail (o.neill@example.org) said: \"DON'T PANIC!!!\" — ALL-CAPS, CamelCase, snake_case.",
)
_SCRIPTS = (
    "我们今天去公园散步，天气非常好。人工智能正在改变世界，小模型也能做很多事情。",
    "日本語のテキストです。カタカナとひらがな、そして漢字が混ざっています。東京は雨でした。",
    "مرحبا بالعالم! هذه جملة باللغة العربية مع أرقام ١٢٣٤٥ وعلامات التشكيل: كَتَبَ الوَلَدُ الدَّرْسَ.",
    "नमस्ते दुनिया! यह हिंदी में एक वाक्य है। संख्याएँ: १२३४५६ और शब्द: क्षत्रिय, द्वारा, श्रीमान।",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка — 2024 г.",
    "안녕하세요, 세계! 한국어 문장입니다. 다람쥐 헌 쳇바퀴에 타고파. 숫자 12,345개.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. עברית: דג סקרן שט בים מאוכזב. ไทย: สวัสดีครับ",
    "Tiếng Việt có dấu: Tôi yêu tiếng nước tôi. Türkçe: Pijamalı hasta yağız şoföre çabucak güvendi.",
)
_EMOJI = (
    "👨‍👩‍👧‍👦 👩🏽‍💻 👍🏻👍🏼👍🏽👍🏾👍🏿 🏳️‍🌈 🇯🇵🇺🇸🇪🇺 ❤️‍🔥 🧑‍🤝‍🧑 😀😃😄 ✌🏿 🫶🏾 #️⃣ 1️⃣ ©️ ™",
    "e\u0301 a\u0308 n\u0303 Z\u0335\u0327\u030c\u0351a\u0336\u0318l\u0337g\u0338o\u0489 "
    "\u1100\u1161\u11a8 \ufb01 \u212b \u00c5 A\u030a \u2126 \u03a9 ﬀ ｆｕｌｌｗｉｄｔｈ ①②③ ½ ² Ⅻ",
)
_CODE = (
    'fn main() {\n    let v: Vec<u64> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n',
    "#include <stdio.h>\nint main(void) {\n\tfor (int i = 0; i < 10; ++i) printf(\"%d\\n\", i);\n\treturn 0;\n}\n",
    "const f = async (x) => { await fetch(`/api/${x}`); return x ?? null; };\r\nexport default f;\r\n",
    "func (s *Server) Handle(w http.ResponseWriter, r *http.Request) {\n\tif err := s.do(r); err != nil {\n"
    "\t\thttp.Error(w, err.Error(), 500)\n\t}\n}\n",
    "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 100.50\n"
    "GROUP BY u.id HAVING n >= 3 ORDER BY n DESC LIMIT 20;\n",
    "<div class=\"x\"><p>Hello&nbsp;<b>world</b></p><!-- comment --></div>\n<?xml version=\"1.0\"?>\n",
    "    def __init__(self, *args, **kwargs) -> None:\n        super().__init__(*args, **kwargs)  # type: ignore\n",
)
_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<|im_start",
             "im_end|>", "<jupyter_code>", "< |im_start|>", "<<|im_end|>>")
_WHITESPACE = (" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\u00a0", "\u3000",
               "\u2003", "\u200b", "\u2028", "\x0b", "\x0c", "\x85", "        ")
# Control bytes without a token in SmolLM2's vocabulary (llama.cpp drops them) and a few that have one.
_CONTROLS = ("\x00", "\x01", "\x04", "\x06", "\x13", "\x14", "\x16", "\x1d", "\x1f", "\x7f")
# Code points assigned in Unicode 16 (Todhri, Garay, Kirat Rai, ...): "unassigned" to llama.cpp.
_NEW_IN_16 = "\U000105c0\U000105c1 \U00010d40\U00010d41\U00010d4a \U00016d40\U00016d70 \u1c89 \U0001ccf0"


def _stdlib_text() -> list[str]:
    import argparse, collections, email.message, json.decoder, textwrap, unittest.case  # noqa: E401
    sources = [inspect.getsource(m) for m in (textwrap, json.decoder, argparse, collections, email.message,
                                               unittest.case)]
    docs = [inspect.getdoc(obj) or "" for obj in (str, dict, list, int, bytes, random.Random)]
    return sources + docs


def _number(rng: random.Random) -> str:
    return rng.choice([
        str(rng.randrange(10 ** rng.randrange(1, 40))),
        f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 12)}f}",
        f"{rng.randrange(1, 10**9):,}",
        f"0x{rng.getrandbits(64):x}",
        f"{rng.random():e}",
    ])


def _mixed(rng: random.Random, n_chars: int) -> str:
    pools = (_PROSE, _SCRIPTS, _EMOJI, _CODE, _SPECIALS, _WHITESPACE, _CONTROLS, (_NEW_IN_16,))
    weights = (6, 6, 2, 4, 1, 3, 1, 1)
    out: list[str] = []
    size = 0
    while size < n_chars:
        pool = rng.choices(pools, weights)[0]
        item = rng.choice(pool)
        if rng.random() < 0.3:  # cut items at random places to create odd boundaries
            a, b = sorted(rng.randrange(len(item) + 1) for _ in range(2))
            item = item[a:b] or item
        out.append(item)
        out.append(rng.choice(_WHITESPACE) if rng.random() < 0.5 else _number(rng) if rng.random() < 0.2 else "")
        size += len(item) + 1
    return "".join(out)


def _json_text(rng: random.Random) -> str:
    def value(depth: int):
        kind = rng.randrange(6 if depth < 4 else 3)
        if kind == 0:
            return rng.choice(_SCRIPTS + _PROSE)[: rng.randrange(1, 60)]
        if kind == 1:
            return rng.choice([rng.randrange(-10**12, 10**12), rng.random() * 1e9, True, False, None])
        if kind == 2:
            return _number(rng)
        if kind == 3:
            return [value(depth + 1) for _ in range(rng.randrange(1, 5))]
        return {f"key_{rng.randrange(1000)}": value(depth + 1) for _ in range(rng.randrange(1, 5))}
    return json.dumps(value(0), ensure_ascii=rng.random() < 0.3, indent=rng.choice([None, 2, "\t"]))


def _codepoint_sweep() -> list[str]:
    """All of planes 0-2 in order, plus every 97th code point above, with varied neighbours."""
    cps = [c for c in range(0x30000) if not 0xD800 <= c < 0xE000]
    cps += list(range(0x30000, 0x110000, 97))
    glue = ("", " ", "a", "1", "'s", "  ", "\n")
    text = []
    for n in range(0, len(cps), 24):
        chunk = "".join(map(chr, cps[n:n + 24]))
        text.append(glue[n % 7] + chunk + glue[(n // 24) % 7] + " " + chunk[::3])
    return ["".join(text[i:i + 40]) for i in range(0, len(text), 40)]


def _split(text: str) -> list[str]:
    return [text[i:i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def corpus_pieces() -> list[str]:
    """Text pieces of at most a few KB each; the same list on every call for a given Python."""
    rng = random.Random(_SEED)
    pieces: list[str] = []
    for source in _stdlib_text():
        pieces += _split(source)
    pieces += _split(_mixed(rng, 500_000))
    pieces += _split("\n".join(_json_text(rng) for _ in range(300)))
    pieces += _codepoint_sweep()
    # Edge cases on their own so that start/end-of-text handling is exercised.
    pieces += [" ", "  ", "\n", "1", " 1", "a  1", "a  b", "'s", "<|im_start|>", "<|im_end|>x", "x<|endoftext|>",
               "\x04", "\U00040000", "   \t\n", "123456789012345678901234567890", "ａ１"]
    return pieces
