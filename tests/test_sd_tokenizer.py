"""CLIP tokenizer from the package's own BPE files, against transformers' CLIPTokenizer."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffusionlab.sd.tokenizer import PACKAGE_FILES, CLIPTokenizer

PROMPTS = [
    "a photo of a cat",
    "An astronaut riding a horse on Mars, 4k, highly detailed, trending on ArtStation!!",
    "I'm sure they've said it's don't-care; we'll see what'd happen",
    "café naïve Ünïcödé Cafe\u0301 über 日本語のテキスト emoji 🐱🚀",
    "(masterpiece:1.2) [bad hands] {foo|bar} x-y_z 3.14159 #1 @user a/b\\c",
    "tabs\tand\nnewlines   and  spaces ",
    "",
    "<|endoftext|> in the middle",
]


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer()


def test_package_files_and_reference_ids(ours):
    assert {p.name for p in PACKAGE_FILES.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    assert ours.vocab_size == 49408
    ids = ours("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all()  # SD 1.x pads with <|endoftext|>


def test_matches_transformers(ours):
    from transformers import CLIPTokenizer as Reference

    ref = Reference.from_pretrained(str(PACKAGE_FILES))
    expected = ref(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    assert ours(PROMPTS).tolist() == expected


def test_long_prompt_truncated_with_warning(ours):
    prompt = "a cat " * 40 + "zebra giraffe"
    with pytest.warns(UserWarning, match=r"84 tokens.*truncated.*'cat a cat a cat zebra giraffe'"):
        ids = ours(prompt)
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert ids[0, 1:76].ne(49407).all()  # 75 real tokens, no padding
    exactly = " ".join(["cat"] * 75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ours(exactly)[0, -1] == 49407


def test_decode_roundtrip(ours):
    text = "an astronaut riding a horse, 4k"
    assert ours.decode(ours.encode(text)) == "an astronaut riding a horse , 4 k"
    with pytest.raises(TypeError, match="str"):
        ours.encode(42)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer(tmp_path)
