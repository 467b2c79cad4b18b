"""Patches applied to llama-cpp-python's source before packaging/llama-wheel.sh
compiles it, as exact text replacements that fail loudly when the source
changed (a new llama-cpp-python pin must re-check each one).

    python packaging/llama-cpp/patch.py SOURCE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

AMX = "vendor/llama.cpp/ggml/src/ggml-cpu/amx/"

# (file, text, replacement, why)
PATCHES = [
    (AMX + "mmq.cpp", "    _tile_loadconfig(&tc);\n",
     "    // GCC 12's _tile_loadconfig gives its asm an 8-byte operand, so the compiler\n"
     "    // dropped the stores to the rest of the config as dead and ldtilecfg faulted\n"
     "    // (#GP) on the first batch of 8+ tokens on any CPU with AMX.\n"
     "    __asm__ volatile(\"ldtilecfg %X0\" : : \"m\"(*(const char (*)[64]) &tc));\n",
     "GCC 12 miscompiles the AMX tile config: a general protection fault on Xeons with AMX"),
    (AMX + "amx.cpp",
     "static bool ggml_amx_init() {\n#if defined(__linux__)\n"
     "    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {\n"
     "        fprintf(stderr, \"AMX is not ready to be used!\\n\");\n        return false;\n    }\n    return true;\n",
     "static bool ggml_amx_init() {\n#if defined(__linux__)\n"
     "    // asked once: this runs for every matmul of every graph (about 200 syscalls per token)\n"
     "    static const bool ready = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;\n"
     "    if (!ready) {\n"
     "        fprintf(stderr, \"AMX is not ready to be used!\\n\");\n        return false;\n    }\n    return true;\n",
     "one arch_prctl syscall per matmul lookup"),
]


def main() -> int:
    root = Path(sys.argv[1])
    for rel, old, new, why in PATCHES:
        path = root / rel
        text = path.read_text()
        if text.count(old) != 1:
            print(f"patch.py: {rel}: the text to replace ({why}) is not there exactly once; "
                  "re-check the patches for this llama-cpp-python version", file=sys.stderr)
            return 1
        path.write_text(text.replace(old, new))
        print(f"patch.py: {rel}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
