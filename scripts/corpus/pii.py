#!/usr/bin/env python3
"""Writes tests/corpus/pii.jsonl: synthetic personal data in context
(emails, phone numbers, payment cards passing Luhn, IBANs passing mod-97,
national ids with their checksums) and benign numbers that look alike
(cards failing Luhn, IBANs with a wrong check, dates, versions, order ids,
UUIDs, hashes, IP addresses...). Seeded; all data is made up (example
domains, the 555-01xx and Ofcom drama ranges where they exist).

    python3 scripts/corpus/pii.py > tests/corpus/pii.jsonl

Labels: `pii:ID` with ID the DLP detector id where Portcullis has one
(`email`, `phone`, `payment-card`, `iban`, `us-ssn`, `es-dni`, `uk-nino`),
else a descriptive id (`nl-bsn`, `br-cpf`, `in-aadhaar`) so formats without a
detector show as misses.
"""
import json
import random
import string
import sys

rng = random.Random(3)
SOURCE = "synthetic (scripts/corpus/pii.py)"
out = []

FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Emeka", "Fatima", "Giulia", "Hiro", "Ingrid", "Jamal", "Kasia", "Liam", "Mei", "Noah", "Olga", "Priya"]
LAST = ["García", "Smith", "Müller", "Okafor", "Rossi", "Tanaka", "Kowalski", "Nguyen", "Silva", "Haddad", "Johansson", "Patel"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example", "example.co.uk"]


def pos(sid, label, text, value):
    assert value in text, (sid, value)
    out.append({"id": sid, "family": "pii", "label": f"pii:{label}", "text": text, "match": value, "source": SOURCE})


def neg(sid, text):
    out.append({"id": sid, "family": "pii", "label": "benign", "text": text, "source": SOURCE})


def name():
    return rng.choice(FIRST), rng.choice(LAST)


def luhn_digit(body):
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d)
        if i % 2 == 0:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return str((10 - total % 10) % 10)


def card(prefix, length):
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn_digit(body)


def group(num, sizes, sep):
    parts, i = [], 0
    for s in sizes:
        parts.append(num[i:i + s])
        i += s
    return sep.join(parts)


def iban(country, bban):
    conv = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(conv) % 97
    return f"{country}{check:02d}{bban}"


CONTEXTS = [
    "Customer record\n---------------\nName: {n}\n{field}: {v}\nSegment: retail\n",
    "{{\"user\": {{\"name\": \"{n}\", \"{key}\": \"{v}\", \"plan\": \"pro\"}}}}\n",
    "2024-10-21 13:02:11 INFO order placed by {n} ({key}={v}) total=49.90 EUR\n",
    "Hi team,\n\nplease update the contact details for {n}: {v}.\n\nThanks,\nSupport\n",
    "id,name,{key},created\n1042,{n},{v},2024-09-30\n",
]


def in_context(sid, label, field, key, v):
    f, l = name()
    tpl = rng.choice(CONTEXTS)
    pos(sid, label, tpl.format(n=f"{f} {l}", field=field, key=key, v=v), v)


def emails():
    for i in range(20):
        f, l = name()
        local = rng.choice([f"{f}.{l}", f"{f[0]}{l}", f"{f}_{l}{rng.randint(1, 99)}", f"{l}+news"])
        local = local.lower().encode("ascii", "ignore").decode() or "user"
        v = f"{local}@{rng.choice(DOMAINS)}"
        in_context(f"email-{i:02d}", "email", "Email", "email", v)


def phones():
    forms = [
        lambda: f"(415) 555-01{rng.randint(10, 99)}",
        lambda: f"+1 415-555-01{rng.randint(10, 99)}",
        lambda: f"415.555.01{rng.randint(10, 99)}",
        lambda: f"+44 20 7946 0{rng.randint(100, 999)}",
        lambda: f"020 7946 0{rng.randint(100, 999)}",
        lambda: f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        lambda: f"+49 30 {rng.randint(1000000, 9999999)}",
        lambda: f"+81 3-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
        lambda: f"+91 98{rng.randint(100, 999)} {rng.randint(10000, 99999)}",
        lambda: f"06 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
    ]
    for i, f in enumerate(forms * 2):
        in_context(f"phone-{i:02d}", "phone", "Phone", "phone", f())


def cards():
    kinds = [("4", 16, [4, 4, 4, 4]), ("51", 16, [4, 4, 4, 4]), ("2221", 16, [4, 4, 4, 4]),
             ("34", 15, [4, 6, 5]), ("37", 15, [4, 6, 5]), ("6011", 16, [4, 4, 4, 4])]
    for i in range(18):
        prefix, length, sizes = kinds[i % len(kinds)]
        num = card(prefix, length)
        v = group(num, sizes, rng.choice([" ", "-", ""]))
        in_context(f"card-{i:02d}", "payment-card", "Card", "card_number", v)
        bad = num[:-1] + str((int(num[-1]) + rng.randint(1, 9)) % 10)
        neg(f"card-bad-luhn-{i:02d}", f"Reference number: {group(bad, sizes, rng.choice([' ', '-', '']))}\n")


def ibans():
    specs = [("DE", lambda: "".join(rng.choice(string.digits) for _ in range(18))),
             ("FR", lambda: "".join(rng.choice(string.digits) for _ in range(23))),
             ("GB", lambda: "NWBK" + "".join(rng.choice(string.digits) for _ in range(14))),
             ("ES", lambda: "".join(rng.choice(string.digits) for _ in range(20))),
             ("NL", lambda: "ABNA" + "".join(rng.choice(string.digits) for _ in range(10))),
             ("IT", lambda: "X" + "".join(rng.choice(string.digits) for _ in range(22)))]
    for i in range(12):
        c, g = specs[i % len(specs)]
        v = iban(c, g())
        shown = " ".join(v[j:j + 4] for j in range(0, len(v), 4)) if i % 2 else v
        in_context(f"iban-{i:02d}", "iban", "IBAN", "iban", shown)
        wrong = v[:2] + f"{(int(v[2:4]) + 1) % 100:02d}" + v[4:]
        neg(f"iban-bad-check-{i:02d}", f"Account (check digits wrong): {wrong}\n")


def national_ids():
    for i in range(8):
        while True:
            area = rng.randint(1, 899)
            if area != 666:
                break
        v = f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        in_context(f"us-ssn-{i:02d}", "us-ssn", "SSN", "ssn", v)
    for i in range(2):
        v = f"{rng.randint(100, 665):03d}{rng.randint(10, 99)}{rng.randint(1000, 9999)}"
        in_context(f"us-ssn-compact-{i:02d}", "us-ssn", "SSN", "ssn", v)
    neg("us-ssn-area-000", "Form field example: 000-12-3456 is never issued.\n")
    neg("us-ssn-area-666", "Test value 666-45-1234 (area 666 is never issued).\n")
    letters = "TRWAGMYFPDXBNJZSQVHLCKE"
    for i in range(6):
        n = rng.randint(10000000, 99999999)
        v = f"{n}{letters[n % 23]}"
        in_context(f"es-dni-{i:02d}", "es-dni", "DNI", "dni", v)
        neg(f"es-dni-bad-letter-{i:02d}", f"Ticket {n}{letters[(n + 1) % 23]} closed.\n")
    for i in range(6):
        p = rng.choice(["AB", "CE", "JG", "KL", "NP", "SW"])
        v = f"{p}{rng.randint(10, 99)}{rng.randint(10, 99)}{rng.randint(10, 99)}{rng.choice('ABCD')}"
        if i % 2:
            v = f"{v[:2]} {v[2:4]} {v[4:6]} {v[6:8]} {v[8]}"
        in_context(f"uk-nino-{i:02d}", "uk-nino", "NI number", "nino", v)
    # Ids with checksums but no detector in Portcullis.
    for i in range(3):
        while True:
            d = [rng.randint(0, 9) for _ in range(8)]
            s = sum(x * w for x, w in zip(d, range(9, 1, -1)))
            last = s % 11
            if last < 10 and d[0] != 0:
                break
        v = "".join(map(str, d)) + str(last)
        in_context(f"nl-bsn-{i:02d}", "nl-bsn", "BSN", "bsn", v)
    for i in range(3):
        d = [rng.randint(0, 9) for _ in range(9)]
        for k in (10, 11):
            s = sum(x * w for x, w in zip(d, range(k, 1, -1)))
            d.append(0 if s % 11 < 2 else 11 - s % 11)
        v = "".join(map(str, d))
        v = f"{v[:3]}.{v[3:6]}.{v[6:9]}-{v[9:]}"
        in_context(f"br-cpf-{i:02d}", "br-cpf", "CPF", "cpf", v)


def benign_numbers():
    hexs = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))  # noqa: E731
    texts = [
        "Released on 2024-11-02 at 14:05:33 UTC (build 2024.11.2-rc.1).",
        "Upgrade from v10.4.0 to v10.12.3; see CHANGELOG for 3.2.1 → 3.3.0.",
        "Order ORD-2024-000123 shipped; invoice INV-88213-B, 3 items, total $1,234.56.",
        f"request id {hexs(8)}-{hexs(4)}-{hexs(4)}-{hexs(4)}-{hexs(12)}",
        f"commit {hexs(40)}",
        "Listening on 10.0.12.7:8443 and [2001:db8::1]:8443.",
        "ISBN 978-0-306-40615-7, 2nd edition, 412 pages.",
        "Tracking: 1Z 999 AA1 01 2345 6784 (UPS).",
        "Unix time 1730000000 = 2024-10-27T03:33:20Z; timeout 30000 ms.",
        "Coordinates 48.858370, 2.294481 (elevation 35 m).",
        "Population (2021): 67,750,000; GDP 2.96 trillion.",
        "user_id=48293017 session=7 retries=3 latency_ms=125",
        "Serial no. 4417-1234-5678-9112 (printed on the device label).",
        "The range 192.168.0.0/16 and ports 5432 6379 9200 are internal.",
        "Dimensions: 1920 x 1080 px, 60 Hz, 24-bit colour.",
        "Part numbers: 4006381333931 (EAN-13), 036000291452 (UPC-A).",
        "Build 20241102.3 passed 1824 tests in 312.4 s.",
        "Matrix:\n 12 34 56 78\n 90 12 34 56\n 78 90 12 34",
        "Lottery draw: 04 11 23 35 42 49 (bonus 07).",
        "Loan 250000 at 3.75% over 25 years: 1285.31 per month.",
        "SKU 100-2003-4005-600, bin A-12-03.",
        "Room 1204, floor 12, building 3; gate code changes monthly.",
        "Version 2024.10.31.1 of the dataset has 4,213,551 rows.",
        "PID 31337 PPID 1 RSS 524288 kB threads 16",
        "Chapter 3, section 3.4.2, equation (3.17).",
    ]
    for i, t in enumerate(texts):
        neg(f"benign-numbers-{i:02d}", t + "\n")
    for i in range(5):
        neg(f"benign-code-{i:02d}", rng.choice([
            "const MAX = 4294967295; // u32::MAX\nlet mask = 0xFFFF_0000;\n",
            "assert_eq!(parse(\"1 234 567\"), 1234567);\n",
            "for i in range(0, 1000, 25):\n    print(i)\n",
            "SELECT * FROM orders WHERE id IN (1001, 1002, 1003) LIMIT 50;\n",
            "git log --since=2024-01-01 --until=2024-06-30 | wc -l\n",
        ]))


def main():
    emails()
    phones()
    cards()
    ibans()
    national_ids()
    benign_numbers()
    for s in out:
        sys.stdout.write(json.dumps(s, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
