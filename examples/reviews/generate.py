"""Generate the review-classification example (German and English shop reviews -> positive/negative/neutral).

Seeded and deterministic: `python examples/reviews/generate.py` rewrites train.jsonl and test.jsonl. Each
review combines a product, one or two remarks about aspects (delivery, quality, price, service) and a closing;
its label follows from the remarks. The test file uses remark wordings that never occur in train.jsonl, so a
classifier is scored on new phrasing. Neutral reviews are rarer (about one in five), as in real shops.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = {  # singular, and German ones always the subject (nominative), so every sentence is grammatical
    "en": [
        "the kettle",
        "the headset",
        "the desk lamp",
        "the backpack",
        "this blender",
        "the office chair",
        "the phone case",
        "the rain jacket",
        "the coffee grinder",
        "the smartwatch",
    ],
    "de": [
        "der Wasserkocher",
        "das Headset",
        "die Schreibtischlampe",
        "der Rucksack",
        "der Mixer",
        "der Bürostuhl",
        "die Handyhülle",
        "die Regenjacke",
        "die Kaffeemühle",
        "die Smartwatch",
    ],
}
# (train wordings, test wordings) per language and sentiment; "{p}" is the product
REMARKS = {
    ("en", "positive"): (
        [
            "{p} arrived a day early and works perfectly",
            "great quality for the price, {p} feels solid",
            "I love it, {p} is exactly as described",
            "customer service answered within an hour, very friendly",
            "{p} exceeded my expectations",
            "very happy, {p} looks even better in person",
            "{p} is excellent, highly recommended",
        ],
        [
            "absolutely delighted, {p} is wonderful",
            "{p} is sturdy, well made and a joy to use",
            "five stars, {p} is worth every cent",
        ],
    ),
    ("en", "negative"): (
        [
            "{p} broke after two days",
            "the delivery took three weeks and the box was damaged",
            "{p} is cheaply made and not worth the money",
            "support never replied to my emails",
            "{p} stopped working, so I sent it back",
            "very disappointed, {p} is flimsy",
            "{p} is terrible, do not buy it",
        ],
        [
            "{p} fell apart on first use, what a letdown",
            "a waste of money, {p} is defective",
            "never again, {p} arrived scratched and nobody helped",
        ],
    ),
    ("en", "neutral"): (
        [
            "{p} does what it should, nothing special",
            "delivery was on time, {p} is okay",
            "{p} is average for the price",
            "{p} is acceptable, some pros and some cons",
        ],
        ["{p} is fine, neither good nor bad", "it works, but {p} is nothing to write home about"],
    ),
    ("de", "positive"): (
        [
            "{p} kam einen Tag früher und funktioniert einwandfrei",
            "super Qualität für den Preis, {p} ist stabil",
            "ich bin begeistert, {p} ist genau wie beschrieben",
            "der Kundenservice war schnell und sehr freundlich",
            "{p} hat meine Erwartungen übertroffen",
            "sehr zufrieden, {p} sieht in echt noch besser aus",
            "{p} ist ausgezeichnet, klare Empfehlung",
        ],
        [
            "rundum glücklich, {p} ist wunderbar",
            "{p} ist hochwertig verarbeitet und macht Freude",
            "fünf Sterne, {p} ist jeden Cent wert",
        ],
    ),
    ("de", "negative"): (
        [
            "{p} war nach zwei Tagen kaputt",
            "die Lieferung dauerte drei Wochen und der Karton war beschädigt",
            "{p} ist billig verarbeitet und das Geld nicht wert",
            "der Support hat nie geantwortet",
            "{p} ging nicht mehr, also habe ich es zurückgeschickt",
            "sehr enttäuscht, {p} ist wackelig",
            "{p} ist furchtbar, bloß nicht kaufen",
        ],
        [
            "{p} ist beim ersten Benutzen auseinandergefallen, was für ein Reinfall",
            "rausgeschmissenes Geld, {p} ist defekt",
            "nie wieder, {p} kam zerkratzt an und keiner half",
        ],
    ),
    ("de", "neutral"): (
        [
            "{p} erfüllt den Zweck, mehr nicht",
            "die Lieferung war pünktlich, {p} ist in Ordnung",
            "{p} ist durchschnittlich für den Preis",
            "{p} ist annehmbar, mit Vor- und Nachteilen",
        ],
        ["{p} ist okay, weder gut noch schlecht", "funktioniert, aber {p} ist nichts Besonderes"],
    ),
}
CLOSINGS = {
    "en": ["", " Order #{n}.", " Bought in {m}.", " (verified purchase)"],
    "de": ["", " Bestellung #{n}.", " Gekauft im {m}.", " (verifizierter Kauf)"],
}
MONTHS = {"en": ["March", "June", "October"], "de": ["März", "Juni", "Oktober"]}


def review(rng: random.Random, held_out: bool) -> dict[str, str]:
    """One review and its label, from train or test wordings."""
    lang = rng.choice(["en", "de"])
    label = rng.choices(["positive", "negative", "neutral"], weights=[4, 4, 2])[0]
    product = rng.choice(PRODUCTS[lang])
    wordings = REMARKS[lang, label][1 if held_out else 0]
    remarks = rng.sample(wordings, k=rng.choice([1, 2]) if len(wordings) > 2 else 1)
    text = ". ".join(r.format(p=product) for r in remarks)
    text = (
        text[0].upper()
        + text[1:]
        + "."
        + rng.choice(CLOSINGS[lang]).format(n=rng.randint(10_000, 99_999), m=rng.choice(MONTHS[lang]))
    )
    return {"text": text, "label": label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300, help="training reviews (before de-duplication)")
    parser.add_argument("--test", type=int, default=80, help="test reviews in held-out wordings")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(__file__).parent
    for name, n, held_out in (("train", args.train, False), ("test", args.test, True)):
        rows = [review(rng, held_out) for _ in range(n)]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
