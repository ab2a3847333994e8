"""tokenizer.json from a GGUF's byte-level BPE vocabulary and merges, with the pre-tokenizer its `pre` names."""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from edgeslm.convert.gguf_llama import TOKEN_CONTROL, TOKEN_USER_DEFINED, GgufVocab
from edgeslm.errors import ModelLoadError

# The split llama.cpp applies before byte-level BPE for Llama-3 style vocabularies.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("smollm",):
        # llama.cpp: every digit on its own, then the GPT-2 split.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "default", ""):
        return byte_level
    if pre in ("llama3", "llama-bpe"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    raise ModelLoadError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: smollm, gpt2, llama-bpe")


def build_tokenizer(vocab: GgufVocab) -> Tokenizer:
    """A Hugging Face tokenizer that splits text into the same ids as llama.cpp does for this vocabulary."""
    if vocab.model != "gpt2":
        raise ModelLoadError(f"GGUF tokenizer model {vocab.model!r} is not supported; only byte-level BPE (gpt2)")
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(vocab.pre)
    tokenizer.decoder = decoders.ByteLevel()
    added = [
        AddedToken(token, special=kind == TOKEN_CONTROL, normalized=False)
        for token, kind in zip(vocab.tokens, vocab.token_types)
        if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    tokenizer.add_tokens(added)
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab.bos_id)])
    return tokenizer
