"""What one device holds, term by term: the arithmetic of ``spa-recipe plan``, with every constant's source.

Sizes: P parameters, R rows a micro-batch (2B for B preference pairs, B for SFT), L tokens a row (the
recipe's ``max_length``: every row counted at full length, the worst case), h hidden, n layers, f MLP width,
V vocabulary, ``a`` bytes an activation value (2 under a 16-bit dtype, 4 in float32). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
MIB = 2**20

# Trained state a parameter, in bytes: float32 master weights 4 + float32 gradients 4 + AdamW's two float32
# moments 8 (torch.optim.AdamW; README "Memory at paper scale"). Sharded over the processes under FSDP2.
TRAINED_BYTES = 16
# Under autocast in one process or DDP, the 16-bit copies of the weights autocast caches for the step
# (torch.autocast's weight cast cache): 2 bytes a parameter more (README).
AUTOCAST_COPY_BYTES = 2
# Activation values a token keeps per layer for the backward: 10h + 4f (the attention block's inputs, q, k, v,
# attention output and the norms ~10h; the gated MLP's up, gate, activation and product 4f), the count the README
# uses (zephyr: 8 rows x 2,048 x 32 layers -> ~100 GB at 2 bytes). SDPA keeps no L x L score matrix.
ACTIVATION_H = 10
ACTIVATION_F = 4
# Gradient checkpointing keeps each layer's input (h values a token) and recomputes one layer at a time; the
# recomputed layer's activations and their gradients: twice one layer's (README).
RECOMPUTE_FACTOR = 2
# Logits of a trained forward, bytes per row-token per vocabulary entry: the logits in the compute dtype (a), their
# float32 copy (4, none when a = 4) and the float32 log-softmax the backward keeps (4) (spa_recipes.packing.
# token_logps). Counted at every position of every row: an upper bound, since the LM head runs only where a
# response token is predicted (spa_recipes.packing.forward_packed).
LOGSOFTMAX_BYTES = 4
# DND (extrapolated confidence): the reference's logits and the extrapolated log-softmax of one length-sorted pass
# (half the rows) beside the policy's: about ``a`` bytes per row-token of the micro-batch. With a = 2 the total,
# 12 bytes, is the README's.
# Scoring (judge, reference log-probs, no gradient): the logits in the compute dtype and one float32 log-softmax.
# Generation: the last position's logits of every sequence in float32 (the sampler's), V x 4 bytes a sequence.
SAMPLER_BYTES = 4
# FSDP2: the 16-bit parameters gathered at once: the root unit (embeddings, LM head, final norm: not resharded
# between forward and backward) and two blocks (the one computing and the one prefetched). README: "1-2 GB".
GATHERED_BLOCKS = 2
# On a GPU: CUDA context, kernels and the caching allocator's slack, not in torch.cuda.max_memory_allocated.
# An assumption (a CUDA 12 context takes 0.3-0.6 GB; fragmentation the rest), not a measurement on this project.
GPU_RUNTIME_GB = 1.5
# On a CPU, what a `spa-recipe run` process holds besides the stage's tensors (measured here, torch 2.13 CPU,
# transformers 5.23; docs/benchmarks.md, "Planning"):
# - in its first stage (split): the interpreter with spa_recipes' runner, torch and transformers imported, 251 MiB
#   (VmRSS of a fresh process after those imports), and the policy's tokenizer, 108 MiB for SmolLM2's 49,152 tokens
#   (VmRSS before and after load_tokenizer): ~2,300 bytes a vocabulary entry (linear in V: an assumption);
CPU_IMPORTS_MIB = 251
TOKENIZER_BYTES_PER_ENTRY = 2300
# - in every later stage: what the run keeps between stages (model code, tokenizers, the rows, allocator slack),
#   measured as the peak of the main-only stages that allocate nothing much: iter1_pairs 405 / 406 MiB and report
#   445 / 450 MiB (SmolLM2-135M / tiny world, after the runner handed the freed heap back: runner/peak_memory.py).
CPU_BETWEEN_STAGES_MIB = 400
# Per-token key/value cache: 2 (k and v) x n x kv_heads x head_dim values.
KV_FACTOR = 2


@dataclass(frozen=True)
class Term:
    """One thing a device holds: a name the table shows, its bytes, and how it was counted."""

    name: str
    bytes: float
    how: str

    @property
    def gb(self) -> float:
        return self.bytes / GB


def trained_state(parameters: int, shards: int) -> Term:
    """Master weights, gradients and AdamW moments of the trained model, split over ``shards`` (FSDP2) or whole."""
    how = f"{TRAINED_BYTES} B x P" + (f" / {shards} (FSDP2)" if shards > 1 else "")
    return Term("trained state", TRAINED_BYTES * parameters / shards, how)


# LoRA (models.adapter): the linear layers of a Llama-style block by PEFT target name, as (in, out) widths in terms of
# h (hidden), f (MLP width), q (heads x head_dim) and kv (kv_heads x head_dim). "all-linear" is all seven.
LORA_SHAPES = {
    "q_proj": ("h", "q"),
    "k_proj": ("h", "kv"),
    "v_proj": ("h", "kv"),
    "o_proj": ("q", "h"),
    "gate_proj": ("h", "f"),
    "up_proj": ("h", "f"),
    "down_proj": ("f", "h"),
}
# QLoRA's NF4 base: 4 bits a weight plus one absmax scale per 64 weights (bitsandbytes' default blocksize), stored in
# 8 bits with double quantisation: ~0.51 bytes a parameter.
NF4_BYTES = 0.51


def lora_parameters(widths: dict[str, int], layers: int, rank: int, targets: list[str] | str) -> int:
    """Adapter parameters: r x (in + out) per adapted linear layer per block. A name the table does not know is
    counted as an h x h layer."""
    names = list(LORA_SHAPES) if targets == "all-linear" else targets
    per_layer = 0
    for name in names:
        a, b = LORA_SHAPES.get(name, ("h", "h"))
        per_layer += rank * (widths[a] + widths[b])
    return layers * per_layer


def adapter_state(parameters: int, shards: int) -> Term:
    """Master weights, gradients and AdamW moments of the LoRA adapter only."""
    how = f"{TRAINED_BYTES} B x adapter P" + (f" / {shards} (FSDP2)" if shards > 1 else "")
    return Term("adapter state", TRAINED_BYTES * parameters / shards, how)


def frozen_base(parameters: int, value_bytes: float, shards: int) -> Term:
    """The adapted model's frozen weights in the model dtype (or NF4), also the DPO reference (adapter disabled)."""
    how = f"{value_bytes:g} B x P" + (f" / {shards} (FSDP2)" if shards > 1 else "") + " (also the reference)"
    return Term("frozen base", value_bytes * parameters / shards, how)


def autocast_copies(parameters: int) -> Term:
    return Term("16-bit weight copies", AUTOCAST_COPY_BYTES * parameters, f"{AUTOCAST_COPY_BYTES} B x P (autocast)")


def frozen_weights(name: str, parameters: int, value_bytes: int) -> Term:
    return Term(name, value_bytes * parameters, f"{value_bytes} B x P")


def layer_values(hidden: int, intermediate: int) -> int:
    """Activation values one token keeps in one layer for the backward."""
    return ACTIVATION_H * hidden + ACTIVATION_F * intermediate


def activations(
    rows: int,
    length: int,
    hidden: int,
    intermediate: int,
    layers: int,
    value_bytes: int,
    checkpointing: bool,
    checkpoint_bytes: int,
) -> list[Term]:
    """The trained forward's activations: every layer's, or (checkpointing) each layer's input plus one recomputed.

    ``checkpoint_bytes``: bytes of a kept layer input (4 under autocast: the residual stream stays float32).
    """
    tokens = rows * length
    per_layer = tokens * layer_values(hidden, intermediate) * value_bytes
    if not checkpointing:
        return [Term("activations", layers * per_layer, f"n x R x L x (10h + 4f) x {value_bytes} B")]
    return [
        Term(
            "layer inputs (checkpointed)",
            layers * tokens * hidden * checkpoint_bytes,
            f"n x R x L x h x {checkpoint_bytes} B",
        ),
        Term("one layer recomputed", RECOMPUTE_FACTOR * per_layer, f"2 x R x L x (10h + 4f) x {value_bytes} B"),
    ]


def trained_logits(rows: int, length: int, vocab: int, value_bytes: int, extrapolated: bool) -> Term:
    """The policy's logits, their float32 copy and log-softmax; under DND the reference's and extrapolated too."""
    per = value_bytes + (4 if value_bytes != 4 else 0) + LOGSOFTMAX_BYTES + (value_bytes if extrapolated else 0)
    return Term(
        "logits", rows * length * vocab * per, f"{per} B x R x L x V" + (" (with DND's)" if extrapolated else "")
    )


def scoring_logits(rows: int, length: int, vocab: int, value_bytes: int) -> Term:
    per = value_bytes + LOGSOFTMAX_BYTES
    return Term("logits", rows * length * vocab * per, f"{per} B x rows x L x V (no gradient)")


def kv_cache(sequences: int, length: int, layers: int, kv_heads: int, head_dim: int, value_bytes: int) -> Term:
    values = KV_FACTOR * layers * kv_heads * head_dim
    return Term("KV cache", sequences * length * values * value_bytes, f"seqs x L x 2n x kv x d x {value_bytes} B")


def sampler_logits(sequences: int, vocab: int) -> Term:
    return Term("logits", sequences * vocab * SAMPLER_BYTES, f"seqs x V x {SAMPLER_BYTES} B")


def fsdp_gathered(layer_parameters: int, embedding_parameters: int, value_bytes: int) -> Term:
    total = (GATHERED_BLOCKS * layer_parameters + embedding_parameters) * value_bytes
    return Term("FSDP2 gathered", total, f"(2 blocks + embeddings) x {value_bytes} B")


def runtime(cpu: bool, vocab: int, first: bool) -> Term:
    """What the process holds besides the stage's own tensors: the CUDA runtime, or a CPU process's baseline."""
    if not cpu:
        return Term("CUDA runtime", GPU_RUNTIME_GB * GB, f"{GPU_RUNTIME_GB} GB assumed")
    if first:
        size = CPU_IMPORTS_MIB * MIB + TOKENIZER_BYTES_PER_ENTRY * vocab
        return Term("process baseline", size, f"{CPU_IMPORTS_MIB} MiB imports + {TOKENIZER_BYTES_PER_ENTRY} B x V")
    return Term("process baseline", CPU_BETWEEN_STAGES_MIB * MIB, f"{CPU_BETWEEN_STAGES_MIB} MiB measured")
