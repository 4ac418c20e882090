"""Generate the contract-extraction example task (German and English clauses -> one fixed JSON object).

Seeded and deterministic: `python examples/contracts/generate.py` rewrites train.jsonl and test.jsonl.
The test file uses clause templates that never occur in train.jsonl, so a model is scored on new wording,
not only on new values.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = (
    "Extract the contract data. Answer with JSON only, keys: provider, customer, start_date (YYYY-MM-DD), "
    "term_months, monthly_fee, currency, notice_months."
)

EN_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DE_MONTHS = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
]
EN_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 9: "nine", 12: "twelve"}
DE_NUM = {1: "einen", 2: "zwei", 3: "drei", 4: "vier", 5: "fünf", 6: "sechs", 9: "neun", 12: "zwölf"}

COMPANY_STEMS = [
    "Nordlicht",
    "Brightwave",
    "Altmann",
    "Keller & Sohn",
    "Bluepeak",
    "Rheinfeld",
    "Silverline",
    "Hoffmann",
    "Crescent",
    "Alpenblick",
    "Redwood",
    "Schäfer",
    "Oakridge",
    "Weber",
    "Lumen",
    "Falkenberg",
    "Harbor",
    "Sonnenweg",
    "Northgate",
    "Baumann",
    "Ironbridge",
    "Seeberg",
    "Maple",
    "Kranich",
]
SECTORS_EN = [
    "Logistics",
    "Software",
    "Facility Services",
    "Consulting",
    "Cloud Systems",
    "Security",
    "Print",
    "Energy",
    "IT Services",
    "Catering",
]
SECTORS_DE = [
    "Logistik",
    "Software",
    "Gebäudeservice",
    "Beratung",
    "Datentechnik",
    "Sicherheit",
    "Druck",
    "Energie",
    "IT-Service",
    "Catering",
]
FORMS_EN = ["Ltd", "Inc.", "LLC", "plc", "GmbH"]
FORMS_DE = ["GmbH", "AG", "KG", "GmbH & Co. KG", "UG"]
FIRST = ["Anna", "Lukas", "Maria", "Jonas", "Sarah", "David", "Laura", "Felix", "Emma", "Paul", "Julia", "Tom"]
LAST = ["Schmidt", "Becker", "Wagner", "Clarke", "Fischer", "Jensen", "Wolf", "Morgan", "Richter", "Turner"]

# Slots: {p} provider, {c} customer, {s} start date, {t} term, {f} fee, {n} notice.
EN_TRAIN = [
    'This Service Agreement is made between {p} ("Provider") and {c} ("Customer"). The agreement commences on {s} '
    "and runs for {t}. Customer shall pay a monthly fee of {f}. Either party may terminate with {n} notice.",
    "{c} engages {p} for a term of {t}, starting {s}. The monthly charge is {f}. "
    "Termination requires {n} written notice.",
    "Effective {s}, {p} will provide the services to {c}. Fees: {f} per month. Term: {t}. Notice period: {n}.",
    "Between {p} and {c}: start date {s}; initial term {t}; monthly fee {f}; either side may cancel on {n} notice.",
    "The Customer, {c}, agrees to pay {p} {f} each month for {t} from {s}. A notice period of {n} applies.",
    "{p} and {c} agree on the following: the contract begins on {s}, has a duration of {t}, costs {f} monthly and "
    "can be terminated with {n} notice.",
    "Subscription terms: supplier {p}; client {c}; commencement {s}; minimum term {t}; {f} billed monthly; "
    "cancellation with {n} notice to the end of a month.",
    "Order {id}: {c} buys the maintenance plan of {p}. Price {f} per month, running {t} from {s}; notice {n}.",
    "{p} (the Licensor) grants {c} (the Licensee) access from {s}. License term: {t}. Monthly license fee: {f}. "
    "Notice of termination: {n}.",
    "Purchase order from {c} to vendor {p}. Monthly amount: {f}. Start: {s}. Period: {t}. Cancellation: {n} notice.",
    "As of {s} the hosting by {p} for {c} costs {f} monthly. The contract term is {t}, the notice period {n}.",
    "Client {c} leases office equipment from lessor {p}: {f} per month for {t}, beginning {s}, {n} notice required.",
]
EN_TEST = [
    "Starting on {s}, {c} rents the equipment from {p} for {t} at {f} a month; the lease ends after {n} notice.",
    "Agreement no. {id}. Contractor: {p}. Client: {c}. Monthly remuneration {f}. Duration {t} as of {s}. Notice: {n}.",
    "We, {p}, confirm the order of {c}: {t} of support from {s} for {f} per month, cancellable with {n} notice.",
]
DE_TRAIN = [
    "Dieser Dienstleistungsvertrag wird zwischen {p} (Auftragnehmer) und {c} (Auftraggeber) geschlossen. Er beginnt "
    "am {s} und läuft {t}. Die monatliche Vergütung beträgt {f}. Die Kündigungsfrist beträgt {n}.",
    "{c} beauftragt {p} ab dem {s} für eine Laufzeit von {t}. Monatliches Entgelt: {f}. Kündigung mit einer Frist "
    "von {n}.",
    "Vertragspartner: {p} und {c}. Vertragsbeginn: {s}. Laufzeit: {t}. Monatliche Gebühr: {f}. Kündigungsfrist: {n}.",
    "Ab dem {s} erbringt {p} die Leistungen für {c}. Das Entgelt beträgt {f} pro Monat, die Mindestlaufzeit {t}; "
    "gekündigt werden kann mit {n} Frist.",
    "Der Auftraggeber {c} zahlt an {p} monatlich {f}. Der Vertrag tritt am {s} in Kraft, gilt für {t} und ist mit "
    "einer Frist von {n} kündbar.",
    "Zwischen {p} und {c} wird vereinbart: Beginn am {s}, Dauer {t}, monatlicher Preis {f}, Kündigung mit {n} Frist "
    "zum Monatsende.",
    "Abonnementvertrag: Anbieter {p}; Kunde {c}; Start {s}; Laufzeit {t}; {f} monatlich; Kündigungsfrist {n}.",
    "Bestellung {id}: {c} bestellt bei {p} den Wartungsvertrag. Preis {f} pro Monat, Laufzeit {t} ab {s}; "
    "Kündigungsfrist {n}.",
    "{p} (Lizenzgeber) räumt {c} (Lizenznehmer) ab dem {s} eine Lizenz für {t} ein. Lizenzgebühr monatlich {f}. "
    "Kündigung mit {n} Frist.",
    "Auftrag von {c} an den Lieferanten {p}: monatlicher Betrag {f}, Beginn {s}, Dauer {t}, Kündigung mit {n} Frist.",
    "Ab {s} kostet das Hosting durch {p} für {c} monatlich {f}. Die Vertragslaufzeit beträgt {t}, die "
    "Kündigungsfrist {n}.",
    "Der Mieter {c} mietet vom Vermieter {p} Büroausstattung: {f} pro Monat für {t}, Beginn {s}, Kündigungsfrist {n}.",
]
DE_TEST = [
    "{c} mietet die Geräte von {p} ab dem {s} für {t} zu {f} im Monat; die Miete endet nach Kündigung mit {n} Frist.",
    "Vertrag Nr. {id}. Dienstleister: {p}. Kunde: {c}. Monatliche Pauschale {f}. Laufzeit {t} ab {s}. "
    "Kündigungsfrist {n}.",
    "Hiermit bestätigt {p} den Auftrag von {c}: Betreuung für {t} ab dem {s} zu {f} monatlich, kündbar mit {n} Frist.",
]


def company(rng: random.Random, lang: str) -> str:
    sector = rng.choice(SECTORS_DE if lang == "de" else SECTORS_EN)
    return f"{rng.choice(COMPANY_STEMS)} {sector} {rng.choice(FORMS_DE if lang == 'de' else FORMS_EN)}"


def party(rng: random.Random, lang: str) -> str:
    return company(rng, lang) if rng.random() < 0.8 else f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def date_text(rng: random.Random, lang: str, y: int, m: int, d: int) -> str:
    if lang == "de":
        return rng.choice([f"{d}. {DE_MONTHS[m - 1]} {y}", f"{d:02d}.{m:02d}.{y}"])
    return rng.choice([f"{EN_MONTHS[m - 1]} {d}, {y}", f"{d} {EN_MONTHS[m - 1]} {y}", f"{y}-{m:02d}-{d:02d}"])


def term_text(rng: random.Random, lang: str, months: int) -> str:
    years = months // 12 if months % 12 == 0 else None
    if lang == "de":
        options = [f"{months} Monate", f"{months} Monaten"]
        if years:
            options.append("ein Jahr" if years == 1 else f"{DE_NUM.get(years, years)} Jahre")
        return rng.choice(options)
    options = [f"{months} months"]
    if years:
        options.append("one year" if years == 1 else f"{EN_NUM.get(years, years)} years")
    return rng.choice(options)


def fee_text(rng: random.Random, lang: str, amount: float, currency: str) -> str:
    whole, cents = divmod(round(amount * 100), 100)
    symbol = {"EUR": "€", "USD": "$", "GBP": "£"}.get(currency)
    if lang == "de":
        number = f"{whole:,}".replace(",", ".") + (f",{cents:02d}" if cents or rng.random() < 0.5 else "")
        return rng.choice([f"{number} {currency}", f"{number} {symbol or currency}", f"{currency} {number}"])
    number = f"{whole:,}" + (f".{cents:02d}" if cents or rng.random() < 0.5 else "")
    return rng.choice(
        [f"{currency} {number}", f"{symbol}{number}" if symbol else f"{currency} {number}", f"{number} {currency}"]
    )


def notice_text(rng: random.Random, lang: str, months: int) -> str:
    if lang == "de":
        word = DE_NUM.get(months, str(months)) if months > 1 else "einem"
        unit = "Monat" if months == 1 else "Monaten"
        return rng.choice([f"{word} {unit}", f"{months} {unit}"]).replace("einem Monat", "einem Monat")
    word = EN_NUM.get(months, str(months))
    return rng.choice(
        [f"{word} months'" if months > 1 else "one month's", f"{months} month" + ("s'" if months > 1 else "'s")]
    )


def example(rng: random.Random, template: str, lang: str) -> dict[str, object]:
    y, m, d = rng.randint(2023, 2027), rng.randint(1, 12), rng.randint(1, 28)
    term = rng.choice([6, 12, 12, 24, 24, 36, 48, 18, 9])
    currency = rng.choice(["EUR", "EUR", "EUR", "USD", "CHF", "GBP"])
    amount = rng.choice([rng.randint(49, 4999) * 1.0, rng.randint(4900, 499999) / 100])
    notice = rng.choice([1, 2, 3, 3, 6])
    provider, customer = party(rng, lang), party(rng, lang)
    while customer == provider:
        customer = party(rng, lang)
    text = template.format(
        p=provider,
        c=customer,
        s=date_text(rng, lang, y, m, d),
        t=term_text(rng, lang, term),
        f=fee_text(rng, lang, amount, currency),
        n=notice_text(rng, lang, notice),
        id=rng.randint(1000, 9999),
    )
    answer = {
        "provider": provider,
        "customer": customer,
        "start_date": f"{y}-{m:02d}-{d:02d}",
        "term_months": term,
        "monthly_fee": amount,
        "currency": currency,
        "notice_months": notice,
    }
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
        ]
    }


def generate(n: int, templates: dict[str, list[str]], rng: random.Random) -> list[dict[str, object]]:
    langs = sorted(templates)
    return [example(rng, rng.choice(templates[lang]), lang) for lang in (langs[i % 2] for i in range(n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=200, help="examples in train.jsonl (later split into train/val)")
    parser.add_argument("--test", type=int, default=48, help="examples in test.jsonl (held-out templates)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for name, n, templates in [
        ("train", args.train, {"en": EN_TRAIN, "de": DE_TRAIN}),
        ("test", args.test, {"en": EN_TEST, "de": DE_TEST}),
    ]:
        rows = generate(n, templates, rng)
        (args.out / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        print(f"wrote {n} examples to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
