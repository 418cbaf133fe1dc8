"""The packaged scorer on its own: fixed examples in several languages, checked against the
operating thresholds (the settings' defaults), and blind to invisible and look-alike characters.
Quality as a whole is measured by ``make eval-safety``; these are clear cases that must not move."""
from __future__ import annotations

import pytest

from chat.screening.policy import decide
from chat.screening.scorer import Scorer
from gateway.screening import thresholds
from gateway.settings import Settings

T = thresholds(Settings())
FEED = {"crisis", "review"}

# (language, text, the categories the model must raise; for crisis, FEED = crisis or at least review)
EXAMPLES = [
    ("en", "I've been saving up my morphine for weeks. Tonight I'm going to take all of it.", {"crisis"}),
    ("es", "Llevo semanas juntando las pastillas para dormir. Esta noche me las tomo todas.", {"crisis"}),
    ("fr", "J'ai mis de côté toutes mes pilules. Ce soir j'en finis, merci pour tout.", {"crisis"}),
    ("de", "Ich habe genug Tabletten gesammelt. Heute Nacht mache ich Schluss.", {"crisis"}),
    ("ru", "Я накопила снотворное. Сегодня ночью всё закончится, прощайте.", FEED),
    ("zh", "我已经攒够了安眠药，今晚就全部吃掉，再见了。", {"crisis"}),
    ("ja", "薬をずっと貯めてきた。今夜全部飲むつもり。みんなありがとう、さようなら。", {"crisis"}),
    ("ar", "جمعت حبوب المنوم من أسابيع، الليلة راح آخذها كلها. مع السلامة.", {"crisis"}),
    ("en", "My scan is on Thursday at 10, I'll tell you how it went.", set()),
    ("es", "Mañana tengo quimio, ¿tú cómo llevaste la segunda sesión?", set()),
    ("fr", "Merci beaucoup pour ton écoute, à jeudi prochain !", set()),
    ("de", "Meine Haare wachsen wieder, ich freu mich so.", set()),
    ("ru", "Спасибо, мне стало легче. До завтра!", set()),
    ("zh", "谢谢你，今天聊得很开心，明天见。", set()),
    ("ja", "今日の検査結果、問題なかったよ！", set()),
    ("ar", "شكراً كتير، حكينا بكرة إن شاء الله.", set()),
    ("en", "You are a pathetic waste of space, nobody wants to hear your whining.", {"abuse"}),
    ("en", "Stop taking your tamoxifen, turmeric and a juice cleanse work much better.", {"medical_advice"}),
]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load()


def test_fixed_examples_meet_the_operating_thresholds(scorer: Scorer) -> None:
    scores = scorer.score([text for _, text, _ in EXAMPLES])
    wrong = []
    for (lang, text, want), s in zip(EXAMPLES, scores, strict=True):
        got = {h.category for h in decide(s, T)}
        ok = bool(got & FEED) and not (got - FEED) if want == FEED else got == want
        if not ok:
            wrong.append((lang, text[:40], sorted(got), {k: round(v, 3) for k, v in s.items()}))
    assert wrong == []


def test_scores_are_probabilities_for_every_label(scorer: Scorer) -> None:
    (s,) = scorer.score(["hello"])
    assert set(s) == {"crisis", "abuse", "medical_advice"} and all(0.0 <= v <= 1.0 for v in s.values())


def test_invisible_and_lookalike_characters_change_no_score(scorer: Scorer) -> None:
    clean = "I want to end my life, I have the pills ready"
    tricked = ["I want to end my l\u200bife, I have the pills ready",
               "I want to end my li\u00adfe, I have the pi\u200dlls ready",
               "I want to \u0435nd my life, I h\u0430ve the pills r\u0435ady",
               "\ufeffI want to end my life, I have the pills ready"]
    reversed_ = "\u202eydaer sllip eht evah I ,efil ym dne ot tnaw I"      # a reader sees the clean text
    base, *others, shown_reversed = scorer.score([clean, *tricked, reversed_])
    for s in others:
        assert s == pytest.approx(base, abs=1e-6)
    assert shown_reversed["crisis"] >= base["crisis"] - 1e-6     # judged as seen (the higher of both readings)


def test_empty_emoji_only_and_very_long_messages_are_scored(scorer: Scorer) -> None:
    long = "I had chemo today and then a long nap. " * 110          # 4,290 characters
    scores = scorer.score(["", "🙏🙏🙏", "\u200b\u200b", long])
    assert len(scores) == 4 and all(0.0 <= v <= 1.0 for s in scores for v in s.values())
    assert not {h.category for s in scores for h in decide(s, T)} & {"crisis"}
