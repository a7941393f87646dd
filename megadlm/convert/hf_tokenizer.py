"""The run's tokenizer as Hugging Face tokenizer files (tokenizer.json + tokenizer_config.json).

megadlm's built-in byte tokenizer (ids 0-255 = bytes, then EOS, then [MASK]) becomes a byte-level
BPE without merges whose vocabulary is ordered by byte value, so every id means the same thing.
"""
from __future__ import annotations

from pathlib import Path


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def save_hf_tokenizer(tok, out: Path, data_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if tok.kind == "bytes":
        vocab = {char: b for b, char in _byte_to_char().items()}
        core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        core.decoder = decoders.ByteLevel()
        eos, mask = "<|endoftext|>", "[MASK]"
        core.add_special_tokens([eos, mask])
        assert core.token_to_id(eos) == tok.eos_id and core.token_to_id(mask) == tok.mask_id
        fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, mask_token=mask)
    else:
        fast = PreTrainedTokenizerFast(tokenizer_file=str(data_dir / "tokenizer.json"))
        fast.eos_token = fast.convert_ids_to_tokens(tok.eos_id)
        fast.mask_token = fast.convert_ids_to_tokens(tok.mask_id)
    fast.pad_token = fast.eos_token
    fast.save_pretrained(str(out))
