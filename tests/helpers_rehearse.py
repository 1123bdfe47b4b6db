"""Local stand-ins for the GPU presets' hub models and data, for ``spa-recipe rehearse`` (no downloads).

``make_model_folder(root, family, texts)`` writes what rehearse reads of a hub model, and nothing more: a real
``config.json`` of the family's class (Mistral for Zephyr, Llama for Llama-3, Phi for Phi-2, Phi-3), a
``generation_config.json`` and a byte-level BPE tokenizer trained on ``texts`` (< 4k tokens) with the family's
special tokens and a chat template like the real one. No weights: rehearse must never need them.

``make_ultrafeedback(path, n)`` writes a Parquet file shaped like ``argilla/ultrafeedback-binarized-preferences-
cleaned``: source, prompt (str), chosen and rejected (lists of {role, content} messages), ratings and models.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# The Zephyr SFT's template (alignment-handbook): no BOS written, each turn ends with EOS.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# Llama-3's header style: the template writes BOS itself.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Phi-3 (medium): system turns are dropped, the assistant header always follows a user turn, turns end with <|end|>.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] + "
    "'<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + "
    "'<|end|>' + '\n'}}{% endif %}{% endfor %}"
)

FAMILIES: dict[str, dict[str, Any]] = {
    # zephyr-7b-sft-full: Mistral, GQA 4:1, a BOS added by the tokenizer, pad = none.
    "zephyr": {
        "specials": ["<unk>", "<s>", "</s>"],
        "bos": "<s>",
        "eos": "</s>",
        "unk": "<unk>",
        "add_bos": True,
        "template": ZEPHYR_TEMPLATE,
        "extra_eos": [],
    },
    # Llama-3-Base-8B-SFT: Llama, GQA 4:1, header tokens, no pad token, <|eot_id|> as a second stop token.
    "llama3": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "add_bos": True,
        "template": LLAMA3_TEMPLATE,
        "extra_eos": ["<|eot_id|>"],
    },
    # phi-2-sft-ultrachat-full: Phi, partial rotary 0.4, one <|endoftext|> for bos/eos/unk, the embedding padded
    # past the tokenizer (51200 for 50295 tokens), the alignment-handbook (Zephyr) template.
    "phi2": {
        "specials": ["<|endoftext|>"],
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "unk": "<|endoftext|>",
        "add_bos": False,
        "template": ZEPHYR_TEMPLATE,
        "extra_eos": [],
        "vocab_padding": 128,
    },
    # Phi-3-medium-4k-instruct: Phi3, GQA 4:1, eos <|endoftext|> (= pad) but turns end with <|end|>.
    "phi3": {
        "specials": ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"],
        "bos": "<s>",
        "eos": "<|endoftext|>",
        "unk": "<unk>",
        "pad": "<|endoftext|>",
        "add_bos": True,
        "template": PHI3_TEMPLATE,
        "extra_eos": ["<|end|>"],
        "vocab_padding": 64,
    },
}


def make_tokenizer(family: str, texts: list[str], vocab_size: int = 1500) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with the family's tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if spec["add_bos"]:
        bos = spec["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    named = {"bos_token": spec["bos"], "eos_token": spec["eos"]}
    for key in ("unk", "pad"):
        if key in spec:
            named[f"{key}_token"] = spec[key]
    others = [t for t in spec["specials"] if t not in named.values()]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=others, **named)
    tokenizer.chat_template = spec["template"]
    return tokenizer


def make_model_folder(root: Path, family: str, texts: list[str]) -> Path:
    """``config.json``, ``generation_config.json`` and tokenizer of a modest model of ``family``; no weights."""
    from transformers import GenerationConfig, LlamaConfig, MistralConfig, Phi3Config, PhiConfig

    spec = FAMILIES[family]
    tokenizer = make_tokenizer(family, texts)
    vocab = len(tokenizer) + spec.get("vocab_padding", 0)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    common = {"vocab_size": vocab, "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, **ids}
    if family == "zephyr":
        config = MistralConfig(
            **common, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768, sliding_window=4096
        )
        config.architectures = ["MistralForCausalLM"]
    elif family == "llama3":
        config = LlamaConfig(
            **common,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
        config.architectures = ["LlamaForCausalLM"]
    elif family == "phi2":
        config = PhiConfig(
            **common,
            num_attention_heads=8,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
        )
        config.architectures = ["PhiForCausalLM"]
    else:
        config = Phi3Config(
            **common,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
        )
        config.architectures = ["Phi3ForCausalLM"]
    folder = root / family
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    stops = [tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in spec["extra_eos"])]
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stops if len(stops) > 1 else stops[0], do_sample=True
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Data -----------------------------------------------------------------------------------------------------

WORDS = (
    "the a an of to in and or for with on at by from about as is are was be can will should could would how what "
    "why when where which who explain describe write list compare give summarize translate improve rewrite "
    "python function list dictionary string number error data model train test loss value table graph network "
    "history science river mountain city music poem story recipe garden weather market energy health sleep "
    "because however therefore example first second finally also very more most less simple clear short long "
    "café naïve résumé über 東京 数据 🙂 ½ → ≤"
).split()
CODE = [
    "```python\ndef add(a, b):\n    return a + b\n```",
    "```sql\nSELECT name, COUNT(*) FROM users GROUP BY name;\n```",
    "`x = [i ** 2 for i in range(10)]`",
]
MODELS = ["gpt-4", "llama-2-70b-chat", "wizardlm-13b", "falcon-40b-instruct", "starchat", "ultralm-65b"]
SOURCES = ["evol_instruct", "false_qa", "flan_v2_niv2", "sharegpt", "ultrachat", "truthful_qa"]


def _text(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    for _ in range(len(words) // 12):  # sentences, numbers, line breaks
        j = rng.randrange(len(words))
        words[j] = rng.choice([f"{words[j]}.", f"{rng.randint(0, 9999)}", f"{words[j]},", f"{words[j]}\n\n"])
    text = " ".join(words)
    if rng.random() < 0.15:
        text += "\n" + rng.choice(CODE)
    return text[:1].upper() + text[1:]


def ultrafeedback_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows shaped like argilla/ultrafeedback-binarized-preferences-cleaned, a few of them unusable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        long = rng.random() < 0.05
        prompt = f"{i}. " + _text(rng, 150, 400) if long else f"{i}. " + _text(rng, 4, 60)
        chosen, rejected = _text(rng, 5, 120), _text(rng, 1, 90)
        rows.append(
            {
                "source": rng.choice(SOURCES),
                "prompt": prompt,
                "chosen": [{"content": prompt, "role": "user"}, {"content": chosen, "role": "assistant"}],
                "chosen-rating": float(rng.randint(3, 5)),
                "chosen-model": rng.choice(MODELS),
                "rejected": [{"content": prompt, "role": "user"}, {"content": rejected, "role": "assistant"}],
                "rejected-rating": float(rng.randint(1, 3)),
                "rejected-model": rng.choice(MODELS),
            }
        )
    rows[5] = {**rows[3]}  # a duplicate prompt (the split keeps the first)
    rows[7]["rejected"] = rows[7]["chosen"]  # chosen equals rejected (skipped)
    return rows


def make_ultrafeedback(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A Parquet file of :func:`ultrafeedback_records`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ultrafeedback_records(n, seed)), path)
    return path


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """The texts the tokenizers are trained on (the data's, so that they split it as a real one would)."""
    texts = []
    for row in ultrafeedback_records(n, seed):
        texts += [row["prompt"], row["chosen"][-1]["content"], row["rejected"][-1]["content"]]
    return texts + ["<|user|>\n<|assistant|>\n<|system|>\n", json.dumps(WORDS)]


# PairRM and the Hugging Face cache -------------------------------------------------------------------------


def make_pairrm_files(root: Path, texts: list[str]) -> tuple[Path, Path]:
    """``(PairRM folder, backbone folder)``: what rehearse reads of ``llm-blender/PairRM`` and its backbone.

    The PairRM folder holds llm-blender's ranker ``config.json`` (naming ``microsoft/deberta-v3-large``) and a
    tokenizer that wraps texts in [CLS] ... [SEP] and knows the four markers; the backbone folder a DeBERTa-v2
    config shaped like deberta-v3 and the same tokenizer without the markers. No weights.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, PreTrainedTokenizerFast

    from spa_recipes.judges.pairrm import MARKERS

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    named = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, mask_token="[MASK]", **named)
    backbone = root / "deberta-v3-large"
    tokenizer.save_pretrained(backbone)
    DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
    ).save_pretrained(backbone)
    pairrm = root / "PairRM"
    tokenizer.add_tokens(MARKERS)
    tokenizer.save_pretrained(pairrm)
    ranker = {
        "ranker_type": "pairranker",
        "model_type": "deberta",
        "model_name": "microsoft/deberta-v3-large",
        "source_maxlength": 1224,
        "candidate_maxlength": 412,
        "n_tasks": 1,
        "drop_out": 0.05,
    }
    (pairrm / "config.json").write_text(json.dumps(ranker))
    return pairrm, backbone


def install_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Put a folder's files into a Hugging Face hub cache as ``repo_id`` (what ``hf download`` leaves there)."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
