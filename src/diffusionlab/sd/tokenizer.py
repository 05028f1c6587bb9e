"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), read from the files shipped in this package.

``tokenizer(prompts) -> ids [B, 77]`` (int64): ``<|startoftext|>``, at most 75 BPE tokens,
``<|endoftext|>``, then padding with ``<|endoftext|>`` (SD 1.x's convention). Longer prompts are
truncated with a warning naming the dropped words.
"""

from __future__ import annotations

import functools
import json
import unicodedata
import warnings
from pathlib import Path

import regex
import torch

PACKAGE_FILES = Path(__file__).with_name("tokenizer_files")

# Word splitter of the original CLIP code: special tokens, English contractions, letter runs,
# single digits, runs of other non-space characters.
_WORDS = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean(text: str) -> str:
    """Normalise unicode (NFC) and whitespace, lowercase (as the transformers tokenizer SD used does)."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


class CLIPTokenizer:
    """Byte-level BPE with CLIP's vocabulary (49,408 tokens) and end-of-word marker ``</w>``."""

    def __init__(self, folder: str | Path = PACKAGE_FILES, max_length: int | None = None):
        folder = Path(folder)
        try:
            self.encoder: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            config_file = folder / "tokenizer_config.json"
            config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"tokenizer folder {str(folder)!r} lacks {Path(err.filename).name}; it needs vocab.json "
                "and merges.txt (and optionally tokenizer_config.json)"
            ) from None
        merges = [tuple(m.split()) for m in merges if m and not m.startswith("#version")]
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.byte_encoder = _byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.max_length = int(max_length or config.get("model_max_length", 77))
        self.bos_id = self.encoder[config.get("bos_token", "<|startoftext|>")]
        self.eos_id = self.encoder[config.get("eos_token", "<|endoftext|>")]
        self.pad_id = self.encoder[config.get("pad_token", "<|endoftext|>")]
        self._cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # ------------------------------------------------------------------------------------------ BPE
    def _bpe(self, word: str) -> list[str]:
        """Merge the characters of one word (byte-mapped) by rank until no known pair remains."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids = []
        for word in _WORDS.findall(_clean(text)):
            if word in ("<|startoftext|>", "<|endoftext|>"):
                ids.append(self.encoder[word])
                continue
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._bpe(mapped))
        return ids

    def decode(self, ids) -> str:
        """Text of token ids (special tokens dropped, ``</w>`` turned into spaces)."""
        special = {self.bos_id, self.eos_id, self.pad_id}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in special)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    # ------------------------------------------------------------------------------------------ batch
    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        """``prompts`` -> ids ``[B, max_length]`` int64, padded; longer prompts truncated with a warning."""
        if isinstance(prompts, str):
            prompts = [prompts]
        room = self.max_length - 2
        rows = []
        for prompt in prompts:
            ids = self.encode(prompt)
            if len(ids) > room:
                dropped = self.decode(ids[room:])
                warnings.warn(
                    f"prompt is {len(ids) + 2} tokens long, more than the text encoder's {self.max_length}; "
                    f"it was truncated and these words are ignored: {dropped!r}",
                    UserWarning,
                    stacklevel=2,
                )
                ids = ids[:room]
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (self.max_length - len(row)))
        return torch.tensor(rows, dtype=torch.long)
