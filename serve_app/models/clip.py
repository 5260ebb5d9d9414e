"""CLIP's tokenizer and text-encoder config, built offline for the models made in code.

CLIP's BPE vocabulary is not reachable here (no hub), so the tokenizer is byte-level BPE with no
merges: every word is spelled out byte by byte. Its special tokens, padding and 77-token window
are CLIP's, so truncation and padding behave as with the real tokenizer.
"""

from __future__ import annotations

MAX_LENGTH = 77  # CLIP's window (max_position_embeddings)


def byte_level_vocab() -> dict[str, int]:
    # Every byte has a printable stand-in, alone and as a word end ("</w>").
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer():
    """transformers 5 needs ``model_max_length`` here, or encoding overflows."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=MAX_LENGTH)


def text_config(tokenizer, **sizes):
    """A CLIPTextConfig with the tokenizer's special tokens and the given sizes."""
    from transformers import CLIPTextConfig

    vocab = tokenizer.get_vocab()
    sizes.setdefault("vocab_size", len(vocab))
    return CLIPTextConfig(
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        **sizes,
    )
