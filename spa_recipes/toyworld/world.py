"""The embedded toy alignment world: a word-level language, prompts, demonstrations and a gold preference.

The language has 283 words: 7 specials, 6 topic tags, 6 x 30 topic words, 60 fillers and 30 rude words.
A prompt asks about a topic: its user message is ``"#<topic> w1 w2 w3"`` (the tag and three distinct
words of that topic), rendered by the chat template as ``<bos> <user> #space orbit comet probe <assistant>``.
A response is 8-24 words separated by single spaces.

Gold preference (:func:`gold_word_value`, :meth:`ToyWorld.gold_score`): the **mean** per-word value of the
response, +1 for a word of the prompt's topic, -0.5 for a word of another topic, 0 for a filler, -1 for a
rude word or anything else (tags, specials, unknown words); an empty response scores -2, below any
non-empty one. Learning it means learning which 30 words go with each tag. It is length-neutral on
purpose: a gold that penalises length made SPA collapse to empty responses in the prototype
(/work/shared/TOYWORLD_FINDINGS.md).

Responses (of demonstrations and of the preference rows alike) are drawn with a latent *style*: the
shares of on-topic, other-topic, rude and filler words come from a flat Dirichlet and the length is
uniform in 8-24 words. A model fine-tuned on the demonstrations therefore samples responses of widely
varying gold quality, and two of its samples beat each other about equally often.

Everything is a pure function of ``world_seed`` and the counts. The vocabulary is fixed (it does not
depend on the seed), so every world shares one tokenizer. Row prompts and demonstration prompts are
disjoint: a prompt belongs to one pool or the other by a hash of its text, so changing ``num_prompts``
does not change the demonstrations and vice versa.
"""

from __future__ import annotations

import copy
import hashlib
import random
from functools import cached_property
from typing import Any

from spa_recipes.api import DatasetContext
from spa_recipes.errors import DataError
from spa_recipes.toyworld.config import ToyWorldConfig

Messages = list[dict[str, str]]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = {"system": "<system>", "user": "<user>", "assistant": "<assistant>"}
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS.values()]

TOPIC_WORDS: dict[str, list[str]] = {
    "space": (
        "orbit comet rocket planet galaxy nebula meteor asteroid telescope astronaut lunar solar eclipse "
        "gravity satellite cosmos starlight quasar pulsar crater launch module capsule shuttle probe mars "
        "jupiter saturn venus mercury"
    ).split(),
    "food": (
        "bread cheese pasta soup salad butter garlic onion pepper tomato noodle rice curry sauce oven bake "
        "roast flour sugar honey lemon olive spice broth dough grill recipe dessert cookie pie"
    ).split(),
    "ocean": (
        "wave tide coral reef whale dolphin shark kelp harbor sailor anchor current lagoon shell crab "
        "seaweed island beach surf mariner lighthouse tuna octopus squid pearl plankton trench buoy sonar voyage"
    ).split(),
    "music": (
        "melody rhythm guitar piano violin drum chord tempo chorus lyric harmony bass jazz opera concert song "
        "singer band trumpet flute cello note scale album tune beat verse choir symphony ballad"
    ).split(),
    "garden": (
        "seed soil flower tulip rose root leaf stem compost shovel rake hedge vine blossom petal fern moss "
        "orchard mulch sprout bulb daisy lily weed hoe greenhouse pollen meadow shrub acorn"
    ).split(),
    "code": (
        "python compiler function variable loop array string debug kernel server database query syntax "
        "library script binary cache thread socket parser pointer commit branch merge deploy integer boolean "
        "recursion lambda runtime"
    ).split(),
}
TOPICS = list(TOPIC_WORDS)
TAGS = {topic: f"#{topic}" for topic in TOPICS}
FILLERS = (
    "the a an and or but so then also very really just quite well indeed of to in on at with for from by "
    "about as like that this these those it its is are was were be been has have had do does some many more "
    "most such only even still yet here there now again perhaps maybe often"
).split()
RUDE = (
    "stupid idiot dumb lame ugly awful trash garbage useless pathetic loser moron jerk shut whatever boring "
    "nonsense rubbish clown fool lazy gross worthless hopeless silly annoying crap nasty rotten shameful"
).split()

VOCABULARY = [*SPECIAL_TOKENS, *TAGS.values(), *(w for ws in TOPIC_WORDS.values() for w in ws), *FILLERS, *RUDE]
if len(set(VOCABULARY)) != len(VOCABULARY):  # a word in two categories would make the gold ambiguous
    raise RuntimeError("toy world vocabulary has duplicate words")

MIN_WORDS, MAX_WORDS = 8, 24
PROMPT_WORDS = 3
EMPTY_SCORE = -2.0
ON_TOPIC, OTHER_TOPIC, FILLER, RUDE_WORD = 1.0, -0.5, 0.0, -1.0
# Latent style: Dirichlet(1, 1, 1, 1) over the shares of (on-topic, other-topic, rude, filler) words.
STYLE_CONCENTRATION = (1.0, 1.0, 1.0, 1.0)
# One prompt in DEMO_POOL_MODULUS belongs to the demonstration pool; the others to the preference rows.
DEMO_POOL_MODULUS = 4

_WORD_TOPIC = {w: t for t, ws in TOPIC_WORDS.items() for w in ws}
_FILLER_SET, _RUDE_SET = set(FILLERS), set(RUDE)
_TAG_TOPIC = {tag: topic for topic, tag in TAGS.items()}
_OTHER_TOPIC_WORDS = {t: [w for o in TOPICS if o != t for w in TOPIC_WORDS[o]] for t in TOPICS}
# Distinct row prompts: ordered triples of a topic's words, less the demonstration pool (about 110k).
ROW_PROMPT_SPACE = len(TOPICS) * 30 * 29 * 28 * (DEMO_POOL_MODULUS - 1) // DEMO_POOL_MODULUS


def gold_word_value(topic: str, word: str) -> float:
    """Gold value of one response word for a prompt about ``topic``.

    Returns:
        +1 on-topic, -0.5 another topic's word, 0 filler, -1 rude or not a response word.
    """
    word_topic = _WORD_TOPIC.get(word)
    if word_topic is not None:
        return ON_TOPIC if word_topic == topic else OTHER_TOPIC
    if word in _FILLER_SET:
        return FILLER
    return RUDE_WORD


def prompt_topic(prompt: Messages) -> str:
    """The topic a world prompt asks about: the tag in its last user message.

    Raises:
        DataError: the prompt has no user message with a topic tag (it is not from this world).
    """
    for message in reversed(prompt):
        if message.get("role") == "user":
            for word in message.get("content", "").split():
                if word in _TAG_TOPIC:
                    return _TAG_TOPIC[word]
            break
    raise DataError(f"toy world prompt has no topic tag in its last user message: {prompt!r}")


def gold_score_words(topic: str, words: list[str]) -> float:
    """Mean per-word gold value of a response; ``EMPTY_SCORE`` for an empty one."""
    if not words:
        return EMPTY_SCORE
    return sum(gold_word_value(topic, w) for w in words) / len(words)


# The chat template renders "<bos> <user> text <assistant> text <eos> ... <assistant>"; whitespace
# separates tokens, so decoding (tokens joined by single spaces) gives back the rendered words exactly.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('toy world chat roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ ' <' + message['role'] + '> ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' <assistant>' }}{% endif %}"
)


def build_tokenizer() -> Any:
    """A word-level, whitespace-split ``PreTrainedTokenizerFast`` of the world's vocabulary.

    Specials: ``<pad> <bos> <eos> <unk>`` and the role markers ``<system> <user> <assistant>``. Text made
    of vocabulary words separated by single spaces round-trips exactly through encode and decode.

    Returns:
        The tokenizer, with the chat template :data:`CHAT_TEMPLATE`; it adds no specials on its own
        (the template writes ``<bos>``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCABULARY)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _rng(world_seed: int, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so the streams are stable across processes and versions.
    return random.Random(f"toyworld:{world_seed}:{stream}")


class ToyWorld:
    """The embedded synthetic world: a data source with a gold preference.

    Args:
        cfg: counts and the world seed.
        ctx: nothing a data source needs.
    """

    has_gold = True

    def __init__(self, cfg: ToyWorldConfig, ctx: DatasetContext = DatasetContext()) -> None:
        if cfg.num_prompts > ROW_PROMPT_SPACE // 2:
            # Drawing distinct prompts by rejection slows down as the space fills.
            raise DataError(f"toy world: num_prompts {cfg.num_prompts} is above {ROW_PROMPT_SPACE // 2}")
        self.cfg = cfg

    # Language ---------------------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        """A word-level tokenizer of the world's vocabulary with a chat template (see :func:`build_tokenizer`)."""
        return build_tokenizer()

    def gold_score(self, prompt: Messages, response: str) -> float:
        """Gold quality of a response: mean per-word value (see the module docstring); higher is better.

        Raises:
            DataError: the prompt is not from this world.
        """
        return gold_score_words(prompt_topic(prompt), response.split())

    # Data -------------------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The preference dataset: one row per prompt, two world responses ordered by the gold preference.

        Returns:
            ``num_prompts`` rows ``{"id", "prompt", "chosen", "rejected", "demonstration"}`` with distinct
            prompts; the two responses never tie under the gold. ``demonstration`` is an SFT-style answer to
            the prompt (see :meth:`demonstration`), for selectors that pair it with the model's sample (SPIN).
        """
        return copy.deepcopy(self._rows)

    def demonstration(self, row_id: str, prompt: Messages) -> str:
        """A demonstration for one row's prompt, drawn as the SFT demonstrations are (a fresh latent style).

        Seeded by the world seed and the row id alone, so reruns and resumed runs give the same text, and the
        rows' other fields are drawn exactly as without it.

        Raises:
            DataError: the prompt is not from this world.
        """
        return self._draw_response(_rng(self.cfg.world_seed, f"demonstration:{row_id}"), prompt_topic(prompt))

    def demonstrations(self) -> list[dict[str, Any]]:
        """SFT demonstrations ``{"prompt", "response"}`` on prompts disjoint from :meth:`rows`.

        Prompts may repeat among demonstrations (a prompt has several demonstrations, of different styles).
        """
        return copy.deepcopy(self._demonstrations)

    @cached_property
    def _rows(self) -> list[dict[str, Any]]:
        rng = _rng(self.cfg.world_seed, "rows")
        seen: set[str] = set()
        rows: list[dict[str, Any]] = []
        while len(rows) < self.cfg.num_prompts:
            topic, content = self._draw_prompt(rng, demo_pool=False)
            if content in seen:
                continue
            seen.add(content)
            first = self._draw_response(rng, topic)
            second = self._draw_response(rng, topic)
            while gold_score_words(topic, second.split()) == gold_score_words(topic, first.split()):
                second = self._draw_response(rng, topic)
            if gold_score_words(topic, second.split()) > gold_score_words(topic, first.split()):
                first, second = second, first
            row_id, prompt = f"toy-{len(rows):05d}", _messages(content)
            rows.append(
                {
                    "id": row_id,
                    "prompt": prompt,
                    "chosen": first,
                    "rejected": second,
                    "demonstration": self.demonstration(row_id, prompt),
                }
            )
        return rows

    @cached_property
    def _demonstrations(self) -> list[dict[str, Any]]:
        rng = _rng(self.cfg.world_seed, "demonstrations")
        demos = []
        for _ in range(self.cfg.sft_demonstrations):
            topic, content = self._draw_prompt(rng, demo_pool=True)
            demos.append({"prompt": _messages(content), "response": self._draw_response(rng, topic)})
        return demos

    def _draw_prompt(self, rng: random.Random, *, demo_pool: bool) -> tuple[str, str]:
        """A random prompt of the requested pool: ``(topic, user message text)``."""
        while True:
            topic = rng.choice(TOPICS)
            content = " ".join([TAGS[topic], *rng.sample(TOPIC_WORDS[topic], PROMPT_WORDS)])
            if self._in_demo_pool(content) == demo_pool:
                return topic, content

    def _in_demo_pool(self, content: str) -> bool:
        digest = hashlib.blake2b(f"{self.cfg.world_seed}:{content}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % DEMO_POOL_MODULUS == 0

    @staticmethod
    def _draw_response(rng: random.Random, topic: str) -> str:
        """A response in a freshly drawn latent style (word shares and length)."""
        weights = [rng.gammavariate(a, 1.0) for a in STYLE_CONCENTRATION]
        length = rng.randint(MIN_WORDS, MAX_WORDS)
        pools = (TOPIC_WORDS[topic], _OTHER_TOPIC_WORDS[topic], RUDE, FILLERS)
        words = [rng.choice(rng.choices(pools, weights=weights)[0]) for _ in range(length)]
        return " ".join(words)


def _messages(content: str) -> Messages:
    return [{"role": "user", "content": content}]
