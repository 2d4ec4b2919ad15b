"""The owner's style as numbers: per-message habit rates, profiles, distances and the caricature guard.

`message_features` turns one message into the `FEATURES` rates; `style_profile` summarises
many messages (mean, std, n per feature, plus the rates of the owner's pet phrases);
`style_distance` measures drafts against the owner in units of the owner's own spread (or both sides');
`caricature_flags` names the habits the drafts exaggerate. Burrows' Delta compares
function-word use and needs a few thousand words per side. Pure functions: no model, no
downloads (the small lexicons are below), English-centred but harmless on other languages.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from training.metrics import words

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Feature:
    """How a feature is shown and checked: `share` features lie in [0, 1]; `habit` ones are caricature-guarded."""

    label: str
    kind: str = "rate"  # "rate" (per message), "share" (0..1), "score" (-1..1) or "sample" (whole sample)
    habit: bool = False


FEATURES: dict[str, Feature] = {
    "words": Feature("words per message"),
    "chars": Feature("characters per message"),
    "sentence_words": Feature("words per sentence"),
    "lower_i": Feature('lower-case "i" among I-pronouns', "share", habit=True),
    "lower_start": Feature("sentences starting lower-case", "share", habit=True),
    "dropped_apostrophes": Feature('contractions without apostrophe ("dont")', "share", habit=True),
    "exclamations": Feature("'!' per message", habit=True),
    "questions": Feature("'?' per message", habit=True),
    "ellipses": Feature("'...' per message", habit=True),
    "commas": Feature("',' per message", habit=True),
    "emoji": Feature("emoji and emoticons per message", habit=True),
    "laughter": Feature("laughter (lol, haha, xD) per message", habit=True),
    "caps_words": Feature("ALL-CAPS words per message", habit=True),
    "function_words": Feature("function words among words", "share"),
    "sentiment": Feature("sentiment (-1..1)", "score"),
    "lexical_diversity": Feature("lexical diversity (type/token, 50-word window)", "sample"),
}

DIVERSITY_WINDOW = 50  # words per window; short enough for a few hundred words, long enough to be stable
DIVERSITY_STEP = 10
MAX_STANDARDISED = 10.0  # one feature the owner never varies cannot swamp "overall"
MIN_DELTA_WORDS = 2000

_I_PRONOUNS = {"i", "i'm", "i've", "i'll", "i'd", "im", "ive"}
# Only contractions whose apostrophe-less spelling is not another word ("its", "well", "were", "ill").
_CONTRACTIONS = {c.replace("'", ""): c for c in (
    "don't doesn't didn't can't won't isn't aren't wasn't weren't haven't hasn't hadn't couldn't "
    "wouldn't shouldn't mustn't i'm i've you're you've you'll they're they've they'll we've that's "
    "what's there's who's he's she's y'all"
).split()}
_FUNCTION_WORDS = frozenset((
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me might more "
    "most must my myself no nor not now of off on once only or other ought our ours ourselves out over own "
    "same shall she should so some such than that the their theirs them themselves then there these they "
    "this those through to too under until up upon very was we were what when where which while who whom "
    "why will with would you your yours yourself yourselves also though although whether yet us"
).split())
_POSITIVE = frozenset((
    "good great nice love loved lovely like liked awesome amazing cool happy glad thanks thank fun funny "
    "best better perfect wonderful beautiful excellent fine yay yes sure enjoy enjoyed fantastic brilliant "
    "sweet cute excited congrats congratulations welcome okay ok kind proud hope pleasure agree interesting "
    "❤️ ❤ 😊 😍 👍 🙂 😀 😄 🥰 :) :-) :D ;)"
).split())
_NEGATIVE = frozenset((
    "bad sad hate hated awful terrible horrible sorry angry annoying annoyed tired sick worst worse wrong "
    "ugly boring bored upset hurt pain problem fail failed stupid damn ugh unfortunately miss missed lost "
    "worried worry scared afraid difficult hard broken disappointed no nope cry crying 😢 😭 😞 😠 👎 🙁 :( :-("
).split())
_NEGATIONS = frozenset("not no never dont don't didn't didnt isn't isnt wasn't wasnt can't cant won't wont".split())

# A sentence ends at ".", "!" or "?" before a space, or at a line break; "..." trails on, it does not end one.
_SENTENCE_SPLIT = re.compile(r"(?:(?<=[!?])|(?<=[^.]\.))\s+|\n+")
_LAUGHTER = re.compile(
    r"^(?:l+o+l+(?:o*l+)*z?|a?h(?:a+h+)+a*|h(?:e+h+)+e*|lmf?a+o+|rofl|x+d+|kek|jaja(?:ja)*|kkkk+)$",
    re.IGNORECASE,
)
_PICTOGRAPH = "[\U0001F300-\U0001FAFF\U00002600-\U000027BF\U0001F000-\U0001F2FF\u2B50\u2B55\u2764\u203C\u2049]"
_EMOJI = re.compile(
    rf"{_PICTOGRAPH}[\U0001F3FB-\U0001F3FF\uFE0F]*(?:\u200D{_PICTOGRAPH}[\U0001F3FB-\U0001F3FF\uFE0F]*)*"
    r"|[\U0001F1E6-\U0001F1FF]{2}"
    r"|(?<![\w:;=])[:;=]-?[)(DPpO/|\]\[*](?![\w)(])"  # text emoticons :) ;-) :D :P :(
)
_ELLIPSIS = re.compile(r"\.{3,}|…")


def _normalise(word: str) -> str:
    return word.lower().replace("’", "'")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and words(s)]


def _sentiment(text: str) -> float:
    """(positive - negative) / (positive + negative) hits of the tiny lexicon; 0 when neutral."""
    found = [_normalise(w) for w in words(text)] + _EMOJI.findall(text)
    positive = negative = 0
    for index, token in enumerate(found):
        polarity = (token in _POSITIVE) - (token in _NEGATIVE)
        if polarity and index > 0 and found[index - 1] in _NEGATIONS:
            polarity = -polarity  # "not good"
        positive += polarity > 0
        negative += polarity < 0
    return (positive - negative) / (positive + negative) if positive + negative else 0.0


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def message_features(text: str) -> dict[str, float | None]:
    """The per-message FEATURES of one text (lexical diversity is sample-level and absent); None = undefined."""
    found = words(text)
    lowered = [_normalise(w) for w in found]
    sentences = _sentences(text)
    i_pronouns = [w for w in found if _normalise(w) in _I_PRONOUNS]
    starts = [s for s in (re.search(r"[^\W\d_]", s) for s in sentences) if s]
    dropped = sum(w in _CONTRACTIONS for w in lowered)
    contractions = dropped + sum(w in _CONTRACTIONS.values() for w in lowered)
    return {
        "words": float(len(found)),
        "chars": float(len(text.strip())),
        "sentence_words": (len(found) / len(sentences)) if sentences else None,
        "lower_i": _share(sum(w[0] == "i" for w in i_pronouns), len(i_pronouns)),
        "lower_start": _share(sum(m.group().islower() for m in starts), len(starts)),
        "dropped_apostrophes": _share(dropped, contractions),
        "exclamations": float(text.count("!")),
        "questions": float(text.count("?")),
        "ellipses": float(len(_ELLIPSIS.findall(text))),
        "commas": float(text.count(",")),
        "emoji": float(len(_EMOJI.findall(text))),
        "laughter": float(sum(bool(_LAUGHTER.match(w)) for w in found)),
        "caps_words": float(sum(len(w) >= 2 and w.isupper() and w.isalpha() for w in found)),
        "function_words": _share(sum(w in _FUNCTION_WORDS for w in lowered), len(lowered)),
        "sentiment": _sentiment(text),
    }


def lexical_diversity_windows(texts: Sequence[str]) -> list[float]:
    """Type/token ratios of 50-word windows sliding (step 10) over all texts' words in order.

    A fixed window keeps the ratio independent of how much text there is; a sample shorter
    than one window gives no value.
    """
    stream = [_normalise(w) for text in texts for w in words(text)]
    return [len(set(stream[start:start + DIVERSITY_WINDOW])) / DIVERSITY_WINDOW
            for start in range(0, len(stream) - DIVERSITY_WINDOW + 1, DIVERSITY_STEP)]


@dataclass(frozen=True)
class FeatureStat:
    """Mean and standard deviation (population) of a feature over the n messages where it is defined."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "FeatureStat":
        present = [v for v in values if v is not None]
        if not present:
            return cls(0.0, 0.0, 0)
        mean = sum(present) / len(present)
        return cls(mean, math.sqrt(sum((v - mean) ** 2 for v in present) / len(present)), len(present))


@dataclass
class StyleProfile:
    """A sample's style: FEATURES stats and the per-message rates of tracked phrases."""

    features: dict[str, FeatureStat]
    phrases: dict[str, FeatureStat] = field(default_factory=dict)
    n_texts: int = 0
    n_words: int = 0

    def to_dict(self) -> dict[str, Any]:
        def stats(d: dict[str, FeatureStat]) -> dict[str, dict[str, float]]:
            return {k: {"mean": s.mean, "std": s.std, "n": s.n} for k, s in d.items()}

        return {"features": stats(self.features), "phrases": stats(self.phrases),
                "n_texts": self.n_texts, "n_words": self.n_words}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StyleProfile":
        def stats(d: dict[str, Any]) -> dict[str, FeatureStat]:
            return {k: FeatureStat(float(s["mean"]), float(s["std"]), int(s["n"])) for k, s in d.items()}

        return cls(features=stats(data.get("features", {})), phrases=stats(data.get("phrases", {})),
                   n_texts=int(data.get("n_texts", 0)), n_words=int(data.get("n_words", 0)))


def style_profile(texts: Sequence[str], *, phrases: Iterable[str] | None = None,
                  other_texts: Sequence[str] | None = None, top_phrases: int = 10) -> StyleProfile:
    """The style profile of `texts` (empty texts are skipped).

    Phrases tracked: `phrases` when given (pass the owner profile's `phrases` keys when
    profiling drafts, so both count the same phrases), else the sample's own pet phrases
    (distinctive against `other_texts` when given).
    """
    texts = [t for t in texts if t and t.strip()]
    rows = [message_features(t) for t in texts]
    features = {name: FeatureStat.of(row[name] for row in rows) for name in FEATURES if name != "lexical_diversity"}
    features["lexical_diversity"] = FeatureStat.of(lexical_diversity_windows(texts))
    tracked = list(phrases) if phrases is not None else pet_phrases(texts, other_texts, top=top_phrases)
    grams = [_token_list(t) for t in texts]
    phrase_stats = {p: FeatureStat.of(float(_count_phrase(g, tuple(p.split()))) for g in grams) for p in tracked}
    return StyleProfile(features=features, phrases=phrase_stats, n_texts=len(texts),
                        n_words=sum(int(row["words"] or 0) for row in rows))


def style_distance(owner: StyleProfile, drafts: StyleProfile) -> dict[str, float]:
    """Per feature, (drafts mean - owner mean) / spread, capped at ±10; "overall" = mean of |values|.

    The spread is the owner's own standard deviation, or the pooled one of owner and drafts when
    that is larger: a habit the owner never varies (no emoji in any message) would otherwise turn
    one stray emoji in twenty drafts into an infinite, capped distance that dominates "overall".
    Features missing on either side are left out; "overall" is absent when nothing could be compared.
    """
    result: dict[str, float] = {}
    for name in FEATURES:
        o, d = owner.features.get(name), drafts.features.get(name)
        if o is None or d is None or not o.n or not d.n:
            continue
        difference = d.mean - o.mean
        spread = max(o.std, math.sqrt((o.std ** 2 + d.std ** 2) / 2))
        z = difference / spread if spread > 0 else (0.0 if difference == 0 else math.copysign(math.inf, difference))
        result[name] = max(-MAX_STANDARDISED, min(MAX_STANDARDISED, z))
    if result:
        result["overall"] = sum(abs(v) for v in result.values()) / len(result)
    return result


def difference_noise(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """The standard error of the difference of two means, each from its own spread and count."""
    return math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)


def _exaggerated(o: FeatureStat, d: FeatureStat, ratio: float, z: float) -> bool:
    """Drafts use a habit at least `ratio` times the owner's rate and beyond sampling noise.

    Noise is the standard error of the difference of the two means (the owner's natural
    message-to-message spread over their n, plus the drafts'), so one stray "!" in sixty
    drafts of an owner who never uses it is not a caricature, while a steady doubling is.
    """
    if not o.n or not d.n or d.mean <= 0 or d.mean < ratio * o.mean:
        return False
    return d.mean - o.mean > z * difference_noise(o.std, o.n, d.std, d.n)


def _times(o: float, d: float) -> str:
    return f"{d / o:.1f}x" if o > 0 else "owner never"


def caricature_flags(owner: StyleProfile, drafts: StyleProfile, *, ratio: float = 2.0, z: float = 2.0) -> list[str]:
    """Human-readable flags for the habits and pet phrases the drafts exaggerate.

    A habit feature (FEATURES[...].habit) or an owner's pet phrase is flagged when the drafts'
    mean is at least `ratio` times the owner's and the difference exceeds `z` standard errors
    (see `_exaggerated`). Profile drafts with `style_profile(drafts, phrases=owner.phrases)` so
    both sides count the same phrases. Example: "'!' per message: drafts 1.40 vs owner 0.60 (2.3x)".
    """
    flags = []
    for name, feature in FEATURES.items():
        o, d = owner.features.get(name), drafts.features.get(name)
        if feature.habit and o is not None and d is not None and _exaggerated(o, d, ratio, z):
            flags.append(f"{feature.label}: drafts {d.mean:.2f} vs owner {o.mean:.2f} ({_times(o.mean, d.mean)})")
    for phrase, o in owner.phrases.items():
        d = drafts.phrases.get(phrase)
        if d is not None and _exaggerated(o, d, ratio, z):
            flags.append(f"pet phrase '{phrase}' per message: drafts {d.mean:.2f} vs owner {o.mean:.2f} "
                         f"({_times(o.mean, d.mean)})")
    return flags


def habit_rates(owner: StyleProfile, drafts: StyleProfile) -> dict[str, tuple[float, float, float, int]]:
    """(drafts' mean, owner's mean, drafts' standard deviation, number of drafts) of every habit and pet
    phrase, named as `caricature_flags` names them: a report can say how far a flagged habit moved
    between two versions, and the gate can tell a real rise over the active adapter from noise."""
    rates: dict[str, tuple[float, float, float, int]] = {}
    for name, feature in FEATURES.items():
        o, d = owner.features.get(name), drafts.features.get(name)
        if feature.habit and o is not None and d is not None:
            rates[feature.label] = (round(d.mean, 4), round(o.mean, 4), round(d.std, 4), d.n)
    for phrase, o in owner.phrases.items():
        d = drafts.phrases.get(phrase)
        if d is not None:
            rates[f"pet phrase '{phrase}' per message"] = (round(d.mean, 4), round(o.mean, 4), round(d.std, 4), d.n)
    return rates


def _token_list(text: str) -> list[str]:
    return [_normalise(w) for w in words(text)]


def _count_phrase(tokens: Sequence[str], phrase: tuple[str, ...]) -> int:
    n = len(phrase)
    return sum(tuple(tokens[i:i + n]) == phrase for i in range(len(tokens) - n + 1)) if n else 0


def _message_ngrams(texts: Sequence[str], sizes: range) -> Counter[tuple[str, ...]]:
    """In how many messages each n-gram occurs (document frequency: one long message counts once)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        tokens = _token_list(text)
        counts.update({tuple(tokens[i:i + n]) for n in sizes for i in range(len(tokens) - n + 1)})
    return counts


def pet_phrases(owner_texts: Sequence[str], other_texts: Sequence[str] | None = None, top: int = 10,
                *, min_messages: int = 3) -> list[str]:
    """The owner's most distinctive frequent word n-grams, most characteristic first.

    An n-gram must occur in at least `min_messages` messages (and 1% of them) and not consist of
    function words only. With `other_texts`, single words count too and candidates are ranked
    by frequency times the log of how much more often the owner uses them than the others;
    without, 2–4-grams are ranked by frequency. A shorter n-gram inside a chosen longer one of
    nearly the same frequency ("be honest" in "to be honest") is dropped.
    """
    owner_texts = [t for t in owner_texts if t and t.strip()]
    if not owner_texts:
        return []
    sizes = range(1, 5) if other_texts else range(2, 5)
    owner_counts = _message_ngrams(owner_texts, sizes)
    other_counts = _message_ngrams(other_texts, sizes) if other_texts else Counter()
    n_owner, n_other = len(owner_texts), len(other_texts or ())
    floor = max(min_messages, math.ceil(0.01 * n_owner))
    scored: list[tuple[float, tuple[str, ...]]] = []
    for gram, count in owner_counts.items():
        if count < floor or all(w in _FUNCTION_WORDS for w in gram):
            continue
        rate = count / n_owner
        if other_texts:
            lift = math.log(((count + 1) / (n_owner + 2)) / ((other_counts[gram] + 1) / (n_other + 2)))
            if lift <= math.log(2):  # the others use it at least half as often: a common phrase
                continue
            score = rate * lift
        else:
            score = rate
        scored.append((score, gram))
    scored.sort(key=lambda item: (-item[0], -len(item[1]), item[1]))
    chosen: list[tuple[str, ...]] = []
    for _, gram in sorted(scored, key=lambda item: (-len(item[1]), -item[0], item[1])):
        if not any(_inside(gram, longer) and owner_counts[longer] >= 0.8 * owner_counts[gram] for longer in chosen):
            chosen.append(gram)
    kept = set(chosen)
    ranked = [gram for _, gram in scored if gram in kept]
    return [" ".join(gram) for gram in ranked[:top]]


def _inside(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    n = len(short)
    return n < len(long) and any(long[i:i + n] == short for i in range(len(long) - n + 1))


def burrows_delta(owner_texts: Sequence[str], other_texts: Sequence[str], top_words: int = 150,
                  *, min_words: int = MIN_DELTA_WORDS, chunk_words: int = 500) -> float | None:
    """Burrows' Delta between two samples: mean |z difference| of the most frequent words' rates.

    With only two writers there is no reference corpus, so each word's spread is the
    within-writer spread: both sides are cut into chunks of `chunk_words` words and the
    chunk-to-chunk deviations from each side's own mean are pooled. Two samples of one writer
    then score below about 1; clearly different writers score several times more. None when
    a side has fewer than `min_words` words.
    """
    owner_words = [_normalise(w) for t in owner_texts for w in words(t)]
    other_words = [_normalise(w) for t in other_texts for w in words(t)]
    if len(owner_words) < min_words or len(other_words) < min_words:
        return None
    vocabulary = [w for w, _ in Counter(owner_words + other_words).most_common(top_words)]

    def rates(stream: list[str]) -> dict[str, float]:
        counts = Counter(stream)
        return {w: counts[w] / len(stream) for w in vocabulary}

    sides = [(rates(stream), [rates(stream[i:i + chunk_words])
                              for i in range(0, len(stream) - chunk_words + 1, chunk_words)])
             for stream in (owner_words, other_words)]
    n_chunks = sum(len(chunks) for _, chunks in sides)
    total, used = 0.0, 0
    for word in vocabulary:
        squares = sum((chunk[word] - whole[word]) ** 2 for whole, chunks in sides for chunk in chunks)
        spread = math.sqrt(squares / n_chunks)
        if spread > 0:
            total += abs(sides[0][0][word] - sides[1][0][word]) / spread
            used += 1
    return total / used if used else 0.0
