"""Rule prompts: small questions with a formatting rule, and a gold preference that checks the rule in code.

A prompt is one user turn: a question whose answer is computable (arithmetic, the number after n, a word
spelled backwards, the letters in a word) followed by one formatting rule::

    What is 17 plus 25? End your answer with the word DONE.
    Spell the word garden backwards. Write your whole answer in capital letters.

Rules (the ``rules`` of :class:`~spa_recipes.rules.config.RulePromptsConfig`):

- ``done``: the answer's last word is ``DONE`` (trailing punctuation allowed).
- ``caps``: the answer has letters and none of them is lower case.

Gold score of a response (higher is better, :func:`gold_score`): ``1`` when the rule is satisfied, plus
``correctness_weight`` (default 0.5, below 1 so the rule always dominates) when the response contains the
correct answer (the number as a whole word; the reversed word, case-insensitively). Two responses that
both satisfy (or both break) the rule are thus ranked by correctness; equal scores are a tie.

Preference rows (:meth:`RulePrompts.rows`) are made from templates, not from a model: ``rejected`` is the
correct answer in a plain sentence (``"17 plus 25 is 42."``), ``chosen`` is the same sentence with the rule
applied (``"17 plus 25 is 42. DONE"``, or upper-cased). The two differ only by the rule, so a seed set
teaches exactly the rule, and every seed label agrees with the gold (1.5 against 0.5). Everything is a pure
function of the config: prompts are drawn with ``random.Random(f"rules:{world_seed}")``.

Why a rule and not an open task: a 135M model's answers cannot be judged in code for quality, but whether
it follows a formatting instruction can be, exactly; SmolLM2-135M-Instruct follows these rules only some
of the time, so there is room for the self-annotation loop to improve it and a gold to measure that.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spa_recipes.api import DatasetContext, EvaluatorContext, JudgeContext
from spa_recipes.errors import DataError
from spa_recipes.rules.config import RuleGoldConfig, RulePromptsConfig

Messages = list[dict[str, str]]

WORDS = (
    "garden river planet window basket candle forest mirror pencil rocket silver orange winter summer "
    "castle dragon button jacket ladder meadow pillow rabbit saddle tunnel velvet walnut yellow bridge "
    "cookie flower guitar island kitten lemon marble needle parrot puzzle shadow tomato"
).split()


@dataclass(frozen=True)
class Rule:
    """A formatting rule: its instruction sentence, a check, and how to apply it to a plain answer."""

    name: str
    instruction: str
    check: Callable[[str], bool]
    apply: Callable[[str], str]


def _ends_with_done(text: str) -> bool:
    return re.search(r"\bDONE[\s.!]*$", text.strip()) is not None


def _all_caps(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and not any(c.islower() for c in letters)


RULES: dict[str, Rule] = {
    "done": Rule("done", "End your answer with the word DONE.", _ends_with_done, lambda a: f"{a} DONE"),
    "caps": Rule("caps", "Write your whole answer in capital letters.", _all_caps, lambda a: a.upper()),
}


@dataclass(frozen=True)
class Question:
    """A question of one task: its text, the correct answer (a token to find) and a plain answer sentence."""

    text: str
    answer: str
    plain: str


def _arithmetic(op: str, a: int, b: int) -> Question:
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    return Question(f"What is {a} {op} {b}?", str(value), f"{a} {op} {b} is {value}.")


# Each task: (draw a question from an rng, a regex that reads the question back from a prompt).
TASKS: dict[str, tuple[Callable[[random.Random], Question], re.Pattern[str], Callable[[re.Match[str]], Question]]] = {
    "add": (
        lambda rng: _arithmetic("plus", rng.randint(2, 99), rng.randint(2, 99)),
        re.compile(r"What is (\d+) plus (\d+)\?"),
        lambda m: _arithmetic("plus", int(m[1]), int(m[2])),
    ),
    "sub": (
        lambda rng: _arithmetic("minus", *sorted((rng.randint(2, 99), rng.randint(2, 99)), reverse=True)),
        re.compile(r"What is (\d+) minus (\d+)\?"),
        lambda m: _arithmetic("minus", int(m[1]), int(m[2])),
    ),
    "mul": (
        lambda rng: _arithmetic("times", rng.randint(2, 12), rng.randint(2, 12)),
        re.compile(r"What is (\d+) times (\d+)\?"),
        lambda m: _arithmetic("times", int(m[1]), int(m[2])),
    ),
    "next": (
        lambda rng: _next(rng.randint(3, 999)),
        re.compile(r"What number comes after (\d+)\?"),
        lambda m: _next(int(m[1])),
    ),
    "reverse": (
        lambda rng: _reverse(rng.choice(WORDS)),
        re.compile(r"Spell the word (\w+) backwards\."),
        lambda m: _reverse(m[1]),
    ),
    "count": (
        lambda rng: _count(rng.choice(WORDS)),
        re.compile(r"How many letters are in the word (\w+)\?"),
        lambda m: _count(m[1]),
    ),
}


def _next(n: int) -> Question:
    return Question(f"What number comes after {n}?", str(n + 1), f"The number after {n} is {n + 1}.")


def _reverse(word: str) -> Question:
    return Question(f"Spell the word {word} backwards.", word[::-1], f"{word} backwards is {word[::-1]}.")


def _count(word: str) -> Question:
    return Question(f"How many letters are in the word {word}?", str(len(word)), f"{word} has {len(word)} letters.")


def parse_prompt(prompt: Messages) -> tuple[Question, Rule]:
    """The question and rule of a rule prompt (read from its last user message).

    Raises:
        DataError: the prompt is not a rule prompt.
    """
    text = next((m.get("content", "") for m in reversed(prompt) if m.get("role") == "user"), "")
    rule = next((r for r in RULES.values() if text.endswith(r.instruction)), None)
    for _, pattern, rebuild in TASKS.values():
        match = pattern.match(text)
        if match and rule is not None:
            return rebuild(match), rule
    raise DataError(f"not a rule prompt (no known question and rule): {text[:120]!r}")


def is_correct(question: Question, response: str) -> bool:
    """Whether the response contains the correct answer (a whole word; case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(question.answer)}(?!\w)", response, flags=re.IGNORECASE) is not None


def gold_score(prompt: Messages, response: str, correctness_weight: float = 0.5) -> float:
    """Gold quality of a response to a rule prompt: rule satisfied (1) + ``correctness_weight`` if correct.

    Raises:
        DataError: the prompt is not a rule prompt.
    """
    question, rule = parse_prompt(prompt)
    return float(rule.check(response)) + correctness_weight * float(is_correct(question, response))


class RulePrompts:
    """The ``rule_prompts`` data source: templated questions with a formatting rule and a gold preference.

    Args:
        cfg: counts, tasks, rules and the seed.
        ctx: nothing a data source needs.

    Raises:
        DataError: more prompts are asked for than the tasks can make distinct.
    """

    has_gold = True

    def __init__(self, cfg: RulePromptsConfig, ctx: DatasetContext = DatasetContext()) -> None:
        self.cfg = cfg

    def gold_score(self, prompt: Messages, response: str) -> float:
        """See :func:`gold_score`."""
        return gold_score(prompt, response)

    def rows(self) -> list[dict[str, Any]]:
        """``num_prompts`` rows ``{"id", "prompt", "chosen", "rejected", "demonstration"}`` with distinct prompts.

        ``chosen`` is the plain correct answer with the prompt's rule applied, ``rejected`` the plain one;
        ``demonstration`` is ``chosen`` (the answer a demonstrator following the rule gives, for SPIN).
        """
        rng = random.Random(f"rules:{self.cfg.world_seed}")
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        attempts = 0
        while len(rows) < self.cfg.num_prompts:
            attempts += 1
            if attempts > 50 * self.cfg.num_prompts:
                raise DataError(
                    f"rule_prompts: cannot make {self.cfg.num_prompts} distinct prompts from "
                    f"tasks {self.cfg.tasks} and rules {self.cfg.rules}; ask for fewer"
                )
            question = TASKS[rng.choice(self.cfg.tasks)][0](rng)
            rule = RULES[rng.choice(self.cfg.rules)]
            content = f"{question.text} {rule.instruction}"
            if content in seen:
                continue
            seen.add(content)
            rows.append(
                {
                    "id": f"rule-{len(rows):05d}",
                    "prompt": [{"role": "user", "content": content}],
                    "chosen": rule.apply(question.plain),
                    "rejected": question.plain,
                    "demonstration": rule.apply(question.plain),
                }
            )
        return rows


class RuleGoldJudge:
    """The rule gold behind the judge contract (``rule_gold``: an oracle for controls, and an evaluator).

    Works on any rule prompt (the rule and the answer are read from the prompt), whatever the data source.

    Args:
        cfg: ``RuleGoldConfig``.
        ctx: the judge or evaluator context; nothing in it is needed (the rule is in the prompt).
    """

    def __init__(self, cfg: RuleGoldConfig, ctx: JudgeContext | EvaluatorContext = JudgeContext()) -> None:
        self.cfg = cfg

    def score(self, rows: list[dict[str, Any]], out_dir: Any = None) -> list[dict[str, Any]]:
        """Gold scores of generated rows (the :class:`spa_recipes.judges.base.Judge` contract).

        Returns:
            The rows in order with ``"scores"`` and ``"valid"`` (all True) added.

        Raises:
            DataError: a prompt is not a rule prompt.
        """
        out = []
        for row in rows:
            scores = [gold_score(row["prompt"], r, self.cfg.correctness_weight) for r in row["responses"]]
            out.append({**row, "scores": scores, "valid": [True] * len(scores)})
        return out
