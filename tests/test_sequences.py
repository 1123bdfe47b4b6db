"""Tokenization as the released SPA code has it (TRL 0.7's DPOTrainer, vLLM with text prompts).

BOS exactly once on every path (HF generation's prompt, the judge's sequences, training's pairs) for
tokenizers built like the real ones, made locally and loaded the way a run loads them:

- Zephyr (Mistral): a Llama tokenizer whose post-processor adds ``<s>``; its chat template writes none.
- Llama-3: the template writes ``<|begin_of_text|>`` and the tokenizer adds another (vLLM would send two).
- Phi-2 (CodeGen/GPT-2): ``bos == eos == <|endoftext|>``, never added by the tokenizer.
- Qwen: no BOS at all.

And TRL 0.7's truncation on constructed over-long pairs, on a word-level tokenizer whose lengths are exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_tiny import make_tokenizer

from spa_recipes.generation import hf
from spa_recipes.generation.config import HFGenerationConfig
from spa_recipes.generation.hf import HFGenerator
from spa_recipes.judges.implicit import _EncodedShards
from spa_recipes.modeling import load_tokenizer
from spa_recipes.schema import TrainingSection
from spa_recipes.sequences import (
    bos_prefix,
    cut_prompt,
    encode_prompt,
    encode_responses,
    encode_sequences,
    render_prompt,
    truncate,
)
from spa_recipes.training.preference import encode_pairs

# The chat templates of HuggingFaceH4/zephyr-7b-beta (as alignment-handbook writes it) and Llama-3.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROMPTS = [
    [{"role": "user", "content": "hi there"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why is the sky blue?"}],
]
RESPONSES = ["it scatters light.", "short"]


def _byte_level_vocab(specials: list[str]) -> dict[str, int]:
    """Specials then the 256 byte-level symbols: every text encodes, one token per byte."""
    from tokenizers import pre_tokenizers

    vocab = {s: i for i, s in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    return vocab


def _byte_level_fast(specials: list[str], template: str, *, added_bos: str | None, **tokens: str):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (no merges); ``added_bos``: the post-processor adds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _byte_level_vocab(specials)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if added_bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{added_bos} $A", special_tokens=[(added_bos, vocab[added_bos])]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=specials, **tokens)
    tokenizer.chat_template = template
    return tokenizer


def zephyr_like():
    """Mistral's kind: a Llama tokenizer (byte fallback, ``<s>`` added by its post-processor)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for piece in list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?|<>/") + ["<0x0A>"]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    return tokenizer


def llama3_like():
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return _byte_level_fast(
        specials, LLAMA3_TEMPLATE, added_bos="<|begin_of_text|>", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )


def phi2_like():
    """Phi-2's CodeGen tokenizer: ``<|endoftext|>`` is BOS, EOS and UNK, and nothing is added to a text."""
    from transformers import CodeGenTokenizer

    tokenizer = CodeGenTokenizer(vocab=_byte_level_vocab(["<|endoftext|>"]), merges=[])
    tokenizer.chat_template = ZEPHYR_TEMPLATE  # the alignment-handbook SFT of Phi-2 uses Zephyr's template
    return tokenizer


def qwen_like():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return _byte_level_fast(
        specials, CHATML_TEMPLATE, added_bos=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


KINDS = {"zephyr": zephyr_like, "llama3": llama3_like, "phi2": phi2_like, "qwen": qwen_like}


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kind saved to a folder: a run loads its tokenizer from ``tokenizer.json`` (:func:`load_tokenizer`)."""
    out = {}
    for kind, build in KINDS.items():
        out[kind] = tmp_path_factory.mktemp(kind)
        build().save_pretrained(out[kind])
    return out


def expected_prompt(kind: str, tokenizer) -> list[int]:
    """The prompt ids spelled out per kind, from the tokenizer's plain encoding of the rendered text."""
    text = render_prompt(tokenizer, PROMPTS[0])
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    own = tokenizer(text)["input_ids"]  # what vLLM makes of a text prompt
    bos = tokenizer.bos_token_id
    if kind == "zephyr":
        # The template writes no BOS; TRL 0.7 and vLLM each put one <s> in front.
        assert plain[0] != bos and own == [bos, *plain]
        return [bos, *plain]
    if kind == "llama3":
        # The template writes <|begin_of_text|>; the tokenizer would add a second one.
        assert plain[0] == bos and own == [bos, *plain]
        return plain
    # Phi-2 and Qwen: the tokenizer adds nothing, and nothing is added.
    assert own == plain and (bos is None or plain[0] != bos)
    return plain


@pytest.mark.parametrize("kind", list(KINDS))
def test_bos_once_in_generation_judging_and_training(
    kind: str, tokenizer_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dirs[kind]))
    prompt = expected_prompt(kind, tokenizer)
    bos = tokenizer.bos_token_id
    assert encode_prompt(tokenizer, PROMPTS[0]) == prompt
    if kind in ("zephyr", "llama3"):
        assert bos_prefix(tokenizer) == [bos] and prompt[0] == bos and bos not in prompt[1:]
    else:
        assert bos_prefix(tokenizer) == [] and (bos is None or prompt[0] != bos)

    # HF generation: the ids model.generate receives (left padding removed).
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    seen: list[list[int]] = []
    generate = model.generate

    def recording(**kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist(), strict=True):
            seen.append([t for t, m in zip(ids, mask, strict=True) if m])
        return generate(**kwargs)

    model.generate = recording
    monkeypatch.setattr(hf, "load_model", lambda *a, **k: model)
    generator = HFGenerator(HFGenerationConfig(samples_per_prompt=2, temperature=1.0, max_new_tokens=3, batch_size=4))
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    generator.generate(rows, model_path=str(tokenizer_dirs[kind]), out_dir=tmp_path / "gen", seed=0, device="cpu")
    prompts = [encode_prompt(tokenizer, p) for p in PROMPTS]
    assert seen == [ids for ids in prompts for _ in range(2)] and seen[0] == prompt

    # The judge: its sequences start with the same prompt ids, then each response and EOS.
    judged = encode_sequences(tokenizer, [PROMPTS[0]] * 2, RESPONSES, 64, 256, group_sizes=[2])
    for (ids, labels), response in zip(judged, RESPONSES, strict=True):
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert ids == prompt + answer and labels == [-100] * len(prompt) + answer
    shards = _EncodedShards(str(tokenizer_dirs[kind]), 64, 256)
    assert shards.get(0, [{"id": "0", "prompt": PROMPTS[0], "responses": RESPONSES}], drop=True) == judged

    # Training: a DPO pair's chosen and rejected, as the trainer encodes them.
    training = TrainingSection(max_length=256, max_prompt_length=64)
    pairs = [{"id": "p", "prompt": PROMPTS[0], "chosen": RESPONSES[0], "rejected": RESPONSES[1]}]
    chosen, rejected = encode_pairs(pairs, tokenizer, training)
    assert [chosen[0], rejected[0]] == judged


# Truncation: a word-level tokenizer (helpers_tiny) given a BOS-adding post-processor, Zephyr's situation.


@pytest.fixture(scope="module")
def words_tokenizer():
    from tokenizers import processors

    tokenizer = make_tokenizer([f"w{i}" for i in range(60)])
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    assert tokenizer("w1")["input_ids"] == [bos, tokenizer.convert_tokens_to_ids("w1")]
    return tokenizer


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{start + i}" for i in range(n))


def prompt_of(n_words: int) -> list[dict[str, str]]:
    """A user turn that renders to ``n_words + 3`` ids: BOS, ``<user>``, the words, ``<assistant>``."""
    return [{"role": "user", "content": words(n_words, 30)}]


MAX_PROMPT, MAX_LENGTH = 8, 20


@pytest.mark.parametrize(
    ("prompt_words", "chosen_words", "rejected_words", "prompt_len", "chosen_len", "rejected_len"),
    [
        # Prompt 12 > max_prompt_length, but 12 + 7 fit in 20: nothing is cut.
        (9, 6, 2, 12, 7, 3),
        # Prompt 6 fits; 6 + 17 > 20: the prompt "cut" changes nothing, both responses are cut to
        # 20 - 8 = 12 tokens: chosen (10) keeps its EOS, rejected loses it.
        (3, 9, 16, 6, 10, 12),
        # 12 + 10 > 20: the prompt is cut to 8 (BOS + its last 7), then 8 + 10 fit; the short rejected
        # response alone would have fitted, it shares the cut prompt.
        (9, 9, 2, 8, 10, 3),
        # 12 + 17 > 20: prompt cut to 8, still 8 + 17 > 20: responses cut to 12, both lose EOS.
        (9, 16, 12, 8, 12, 12),
    ],
)
def test_trl_truncation_of_a_pair(
    words_tokenizer,
    prompt_words: int,
    chosen_words: int,
    rejected_words: int,
    prompt_len: int,
    chosen_len: int,
    rejected_len: int,
) -> None:
    tok = words_tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    messages = prompt_of(prompt_words)
    full_prompt = encode_prompt(tok, messages)
    assert len(full_prompt) == prompt_words + 3 and full_prompt.count(bos) == 1
    texts = [words(chosen_words), words(rejected_words, 10)]
    encoded = encode_responses(tok, messages, texts, MAX_PROMPT, MAX_LENGTH)
    prompt = encoded[0][0][:prompt_len]
    assert prompt[0] == bos and prompt.count(bos) == 1
    # The prompt keeps its end: the instruction's last words and the generation prompt.
    assert prompt[1:] == full_prompt[len(full_prompt) - prompt_len + 1 :]
    for (ids, labels), text, length in zip(encoded, texts, [chosen_len, rejected_len], strict=True):
        assert ids[:prompt_len] == prompt and len(ids) <= MAX_LENGTH
        response = ids[prompt_len:]
        assert len(response) == length and labels == [-100] * prompt_len + response
        whole = tok(text, add_special_tokens=False)["input_ids"] + [eos]
        assert response == whole[:length]
        assert (response[-1] == eos) == (length == len(whole))  # a cut response has lost its EOS
    # The DPO trainer encodes the pair exactly so (its reference log-probs may come from the judge's encoding).
    training = TrainingSection(max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
    pair = {"id": "p", "prompt": messages, "chosen": texts[0], "rejected": texts[1]}
    chosen, rejected = encode_pairs([pair], tok, training)
    assert [chosen[0], rejected[0]] == encoded


def test_encode_sequences_equals_the_per_group_path(words_tokenizer) -> None:
    tok = words_tokenizer
    prompts = [prompt_of(9), prompt_of(9), prompt_of(2), prompt_of(9), prompt_of(9), prompt_of(3)]
    responses = [words(9), words(2, 10), words(16), words(3), words(1), ""]
    for limits in [(None, None), (MAX_PROMPT, MAX_LENGTH)]:
        # Every pair alone (the default) ...
        alone = [encode_responses(tok, p, [r], *limits)[0] for p, r in zip(prompts, responses, strict=True)]
        assert encode_sequences(tok, prompts, responses, *limits) == alone
        # ... or rows of responses that share their prompt's cut.
        rows = [(0, 2), (2, 3), (3, 5), (5, 6)]
        grouped = [s for a, b in rows for s in encode_responses(tok, prompts[a], responses[a:b], *limits)]
        assert encode_sequences(tok, prompts, responses, *limits, group_sizes=[b - a for a, b in rows]) == grouped
    # Row 1: prompt 12 + longest response 10 > 20, so the prompt is cut to 8, also for the 3-token response
    # (alone, 12 + 3 fit: uncut). Row 2: prompt 5 + 17 > 20, the response is cut to 12 and loses EOS.
    # Row 3: 12 + 4 fit, nothing is cut. Row 4: 6 + 1.
    grouped = encode_sequences(tok, prompts, responses, MAX_PROMPT, MAX_LENGTH, group_sizes=[2, 1, 2, 1])
    assert [len(ids) for ids, _ in grouped] == [8 + 10, 8 + 3, 5 + 12, 12 + 4, 12 + 2, 6 + 1]
    assert [len(ids) for ids, _ in encode_sequences(tok, prompts, responses, MAX_PROMPT, MAX_LENGTH)][1] == 12 + 3
    assert [ids[-1] == tok.eos_token_id for ids, _ in grouped] == [True, True, False, True, True, True]
    with pytest.raises(ValueError, match="group sizes"):
        encode_sequences(tok, prompts, responses, group_sizes=[2, 2])
    with pytest.raises(ValueError, match="needs a smaller max_prompt_length"):
        encode_sequences(tok, prompts, responses, None, MAX_LENGTH)


def test_cut_prompt_keeps_bos_in_front() -> None:
    assert cut_prompt([1, 5, 6, 7, 8], 3, bos_token_id=1) == [1, 7, 8]
    assert cut_prompt([5, 6, 7, 8], 3, bos_token_id=1) == [6, 7, 8]
    assert cut_prompt([1, 5, 6], 3, bos_token_id=1) == [1, 5, 6]
    assert cut_prompt([1, 5, 6, 7], 1, bos_token_id=1) == [1]
    assert cut_prompt([1, 5, 6], None, bos_token_id=1) == [1, 5, 6]
    assert truncate([1, 5], [[9, 2]], None, None) == ([1, 5], [[9, 2]])


def test_generation_cuts_a_long_prompt_like_training(words_tokenizer) -> None:
    """Generation has no response: a prompt over max_prompt_length is cut the way training cuts it."""
    tok = words_tokenizer
    messages = prompt_of(12)  # 15 ids
    generated = encode_prompt(tok, messages, MAX_PROMPT)
    trained = encode_responses(tok, messages, [words(16)], MAX_PROMPT, MAX_LENGTH)[0][0][:MAX_PROMPT]
    assert generated == trained and len(generated) == MAX_PROMPT and generated[0] == tok.bos_token_id
    assert encode_prompt(tok, prompt_of(3), MAX_PROMPT) == encode_prompt(tok, prompt_of(3))
