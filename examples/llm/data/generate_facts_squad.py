"""Generate the shipped fictional-facts QA dataset in SQuAD format (deterministic, standard library only).

Each row is one question about a short fictional encyclopedic paragraph (a person, a company, a town, an invention
or a river; 3-5 sentences). Questions ask who / where / when / what / how many, and every answer is a short span
copied from the paragraph, so a model can learn to answer by reading. Rows use the exact Hugging Face
``rajpurkar/squad`` schema::

    {"id", "title", "context", "question", "answers": {"text": [answer], "answer_start": [char offset]}}

and ``context[answer_start:answer_start + len(text)] == text`` is asserted for every row. Every proper name is
invented and used by exactly one paragraph, so validation entities never appear in training.

Usage (the defaults regenerate the shipped files byte for byte)::

    python examples/llm/data/generate_facts_squad.py [--out-dir DIR] [--num-train 2000] [--num-validation 200]
                                                     [--seed 1234]
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

# --- vocabulary ------------------------------------------------------------------------------------------------
ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "w"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk", "m", "x", "ld", "st"]
FIRST_NAMES = [
    "Ada", "Alwen", "Anselm", "Beatrix", "Bram", "Cora", "Dorian", "Edda", "Elias", "Emeric", "Freya", "Gideon",
    "Greta", "Hannes", "Ilse", "Ivo", "Jorun", "Kasimir", "Lena", "Linus", "Magda", "Milo", "Nadia", "Oskar",
    "Petra", "Quentin", "Rosa", "Rune", "Selma", "Tobias", "Ulla", "Viktor", "Wilma", "Yara", "Zeno", "Agnes",
    "Bruno", "Clara", "Emil", "Hedda", "Jonas", "Livia", "Matthis", "Nora", "Otto", "Sigrid", "Theo", "Vera",
]  # fmt: skip
ADJECTIVES = [
    "Silent", "Amber", "Northern", "Hollow", "Distant", "Crimson", "Quiet", "Golden", "Broken", "Winter", "Pale",
    "Hidden", "Iron", "Last", "Gentle", "Salt", "Wandering", "Bright", "Long", "Evening",
]  # fmt: skip
NOUNS = [
    "Harbour", "Orchard", "Lantern", "Garden", "Tide", "Meadow", "Bell", "Bridge", "Shore", "Window", "Road",
    "Forest", "Mirror", "River", "Island", "Tower", "Valley", "Letter", "Compass", "Field",
]  # fmt: skip
# profession, article, what they make (plural), verb (past, base), kind of famous work
PROFESSIONS = [
    ("novelist", "a", "novels", "wrote", "write", "novel"),
    ("painter", "a", "paintings", "painted", "paint", "painting"),
    ("composer", "a", "symphonies", "composed", "compose", "symphony"),
    ("poet", "a", "poetry collections", "published", "publish", "collection"),
    ("architect", "an", "buildings", "designed", "design", "building"),
    ("engineer", "an", "bridges", "built", "build", "bridge"),
    ("playwright", "a", "plays", "wrote", "write", "play"),
    ("sculptor", "a", "statues", "carved", "carve", "statue"),
    ("cartographer", "a", "maps", "drew", "draw", "map"),
    ("photographer", "a", "exhibitions", "held", "hold", "photograph"),
]
# industry, company-name noun, what it makes, flagship product noun
INDUSTRIES = [
    ("textile", "Textiles", "woollen fabrics", "Coat"),
    ("bicycle", "Bicycles", "bicycles", "Roadster"),
    ("tea", "Tea Company", "blended teas", "Breakfast Blend"),
    ("clock", "Clockworks", "clocks", "Mantel Clock"),
    ("furniture", "Furniture", "chairs and tables", "Armchair"),
    ("toy", "Toys", "wooden toys", "Kite"),
    ("shipbuilding", "Shipyards", "river ferries", "Ferry"),
    ("glass", "Glassworks", "glass bottles", "Lamp"),
    ("paper", "Paper Mills", "writing paper", "Notebook"),
    ("instrument", "Instruments", "violins", "Violin"),
]
FEATURES = [
    "annual lantern festival", "wool market", "stone bridge", "glass workshops", "cherry orchards",
    "clock tower", "horse fair", "salt caves", "rose gardens", "boat races", "cheese market", "old windmill",
]  # fmt: skip
# name, kind of device, what it was designed to do
DEVICES = [
    ("loom", "weaving machine", "weave patterned cloth"),
    ("pump", "water pump", "drain flooded mines"),
    ("lamp", "signal lamp", "send messages between ships"),
    ("press", "printing press", "print maps in colour"),
    ("engine", "steam engine", "power grain mills"),
    ("scale", "balance scale", "weigh letters and parcels"),
    ("kiln", "brick kiln", "fire bricks evenly"),
    ("telescope", "reflecting telescope", "observe distant comets"),
    ("valve", "pressure valve", "make boilers safer"),
    ("plough", "iron plough", "cut through heavy clay soil"),
]
TOWN_SUFFIXES = ["ford", "wick", "holm", "stead", "by", "mouth", "dale", "bridge", "haven", "moor", "ton", "field"]

# --- facts ---------------------------------------------------------------------------------------------------
# Each fact: sentence variants (all of them mention every slot its questions ask about) and questions as
# (question template, answer slot). The first fact of each kind always opens the paragraph.
PERSON = [
    (
        [
            "{name} was {article} {profession} born in {town_born} in {year_born}.",
            "Born in {town_born} in {year_born}, {name} became a well-known {profession}.",
            "{name} was {article} {profession} who was born in {year_born} in the town of {town_born}.",
        ],
        [
            ("Where was {name} born?", "town_born"),
            ("In which town was {name} born?", "town_born"),
            ("In what year was {name} born?", "year_born"),
            ("When was {name} born?", "year_born"),
            ("What was {name}'s profession?", "profession"),
        ],
    ),
    (
        [
            "{Pron} trained under {teacher} at the {institution}.",
            "As a young {profession}, {last} studied with {teacher} at the {institution}.",
        ],
        [("Who did {name} train under?", "teacher"), ("Where did {name} study?", "institution")],
    ),
    (
        [
            "{last} is best remembered for the {work_kind} {work}, completed in {year_work}.",
            "The {work_kind} {work}, finished in {year_work}, is {last}'s best-known work.",
        ],
        [
            ("Which {work_kind} is {name} best remembered for?", "work"),
            ("When was {work} completed?", "year_work"),
        ],
    ),
    (
        ["Over {poss} career, {last} {verb} {count} {things}.", "In total, {last} {verb} {count} {things}."],
        [("How many {things} did {name} {verb_base}?", "count")],
    ),
    (
        ["In {year_award}, {last} received the {award}.", "{last} was awarded the {award} in {year_award}."],
        [("Which award did {name} receive?", "award"), ("When did {name} receive the {award}?", "year_award")],
    ),
    (
        ["{Pron} died in {town_died} in {year_died}.", "{last} died in {year_died} in {town_died}."],
        [("Where did {name} die?", "town_died")],
    ),
]
COMPANY = [
    (
        [
            "{company} is a {industry} company founded in {year} by {founder}.",
            "Founded by {founder} in {year}, {company} is a {industry} company.",
        ],
        [
            ("Who founded {company}?", "founder"),
            ("When was {company} founded?", "year"),
            ("In what year was {company} founded?", "year"),
        ],
    ),
    (
        ["Its headquarters are in {town}.", "The company is based in the town of {town}."],
        [("Where is {company} based?", "town"), ("In which town are the headquarters of {company}?", "town")],
    ),
    (
        ["The company employs about {count} people.", "{company} has a workforce of about {count} people."],
        [("How many people does {company} employ?", "count")],
    ),
    (
        [
            "It makes {goods}, and its best-selling product is the {product}.",
            "Its best-selling product is the {product}.",
        ],
        [("What is the best-selling product of {company}?", "product")],
    ),
    (
        ["Since {year_ceo}, the company has been led by {ceo}.", "{ceo} has run the company since {year_ceo}."],
        [("Who leads {company}?", "ceo"), ("Since when has {ceo} led {company}?", "year_ceo")],
    ),
]
TOWN = [
    (
        [
            "{town} is a town in the {region} region, on the {river}.",
            "The town of {town} lies on the {river} in the {region} region.",
        ],
        [("In which region is {town}?", "region"), ("Which river does {town} lie on?", "river")],
    ),
    (
        ["It was founded in {year} by {founder}.", "{founder} founded the town in {year}."],
        [("When was {town} founded?", "year"), ("Who founded {town}?", "founder")],
    ),
    (
        ["{town} has a population of {count}.", "About {count} people live in {town}."],
        [("What is the population of {town}?", "count"), ("How many people live in {town}?", "count")],
    ),
    (
        ["The town is known for its {feature}.", "Visitors come to {town} for its {feature}."],
        [("What is {town} known for?", "feature")],
    ),
    (
        ["The current mayor is {mayor}.", "Since {year_mayor}, the mayor of {town} has been {mayor}."],
        [("Who is the mayor of {town}?", "mayor")],
    ),
]
INVENTION = [
    (
        [
            "The {invention} is a {device} invented by {inventor} in {year}.",
            "{inventor} invented the {invention}, a {device}, in {year}.",
        ],
        [
            ("Who invented the {invention}?", "inventor"),
            ("In what year was the {invention} invented?", "year"),
            ("What kind of device is the {invention}?", "device"),
        ],
    ),
    (
        ["It was first demonstrated in {town} in {year_demo}.", "The first public demonstration took place in {town}."],
        [("Where was the {invention} first demonstrated?", "town")],
    ),
    (
        ["The machine was designed to {purpose}.", "It was built to {purpose}."],
        [("What was the {invention} designed to do?", "purpose")],
    ),
    (
        ["Early models weighed about {weight}.", "The first models weighed about {weight}."],
        [("How much did early models of the {invention} weigh?", "weight")],
    ),
    (
        ["By {year_sold}, more than {count} units had been sold.", "More than {count} units were sold by {year_sold}."],
        [("How many units of the {invention} were sold by {year_sold}?", "count")],
    ),
    (
        ["The design was later manufactured by {company}.", "{company} later produced the design."],
        [("Which company manufactured the {invention}?", "company")],
    ),
]
RIVER = [
    (
        [
            "The {river} is a river in the {region} region, {length} long.",
            "Flowing for {length}, the {river} is the longest river of the {region} region.",
        ],
        [("How long is the {river}?", "length"), ("In which region is the {river}?", "region")],
    ),
    (
        ["It rises in the {hills} and flows into {lake}.", "The {river} rises in the {hills} and ends in {lake}."],
        [("Where does the {river} rise?", "hills"), ("Into which lake does the {river} flow?", "lake")],
    ),
    (
        ["The largest town on its banks is {town}.", "{town} is the largest town on the {river}."],
        [("What is the largest town on the {river}?", "town")],
    ),
    (
        [
            "The river was first mapped in {year} by the explorer {explorer}.",
            "The explorer {explorer} mapped the river in {year}.",
        ],
        [("Who first mapped the {river}?", "explorer"), ("When was the {river} first mapped?", "year")],
    ),
    (
        ["Today {count} bridges cross the {river}.", "The {river} is crossed by {count} bridges."],
        [("How many bridges cross the {river}?", "count")],
    ),
]


# --- names and values ----------------------------------------------------------------------------------------
class Names:
    """Invented proper names; every one is unique across the whole dataset (so splits share no entity)."""

    def __init__(self, rng: random.Random, used: set[str]) -> None:
        self.rng = rng
        self.used = used

    def _unique(self, make) -> str:
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name

    def _syllables(self, count: int) -> str:
        rng = self.rng
        return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(count)).capitalize()

    def word(self) -> str:
        return self._unique(lambda: self._syllables(2))

    def person(self) -> str:
        # Surnames are unique words; a first name may repeat.
        return f"{self.rng.choice(FIRST_NAMES)} {self.word()}"

    def town(self) -> str:
        return self._unique(lambda: self._syllables(1) + self.rng.choice(TOWN_SUFFIXES))


def distinct_years(rng: random.Random, count: int, low: int, high: int) -> list[int]:
    return sorted(rng.sample(range(low, high), count))


def person_values(rng: random.Random, names: Names) -> dict[str, str]:
    profession, article, things, verb, verb_base, work_kind = rng.choice(PROFESSIONS)
    born = rng.randrange(1700, 1930)
    year_work, year_award, died = distinct_years(rng, 3, born + 25, born + 90)
    pron, poss = rng.choice([("He", "his"), ("She", "her")])
    first, last = names.person().split(" ")
    work = f"{names.word()} {rng.choice(['Bridge', 'Hall'])}" if work_kind in ("bridge", "building") else None
    return {
        "name": f"{first} {last}",
        "last": last,
        "Pron": pron,
        "poss": poss,
        "profession": profession,
        "article": article,
        "things": things,
        "verb": verb,
        "verb_base": verb_base,
        "work_kind": work_kind,
        "work": work or f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
        "town_born": names.town(),
        "town_died": names.town(),
        "year_born": str(born),
        "year_work": str(year_work),
        "year_award": str(year_award),
        "year_died": str(died),
        "teacher": names.person(),
        "institution": f"{names.word()} {rng.choice(['Academy', 'Institute', 'School of Arts', 'College'])}",
        "count": str(rng.randrange(3, 60)),
        "award": f"{names.word()} {rng.choice(['Medal', 'Prize', 'Award'])}",
    }


def company_values(rng: random.Random, names: Names) -> dict[str, str]:
    industry, company_noun, goods, product_noun = rng.choice(INDUSTRIES)
    year, year_ceo = distinct_years(rng, 2, 1820, 2021)
    return {
        "company": f"{names.word()} {company_noun}",
        "industry": industry,
        "goods": goods,
        "product": f"{names.word()} {product_noun}",
        "year": str(year),
        "year_ceo": str(year_ceo),
        "founder": names.person(),
        "ceo": names.person(),
        "town": names.town(),
        "count": f"{rng.randrange(40, 20000):,}",
    }


def town_values(rng: random.Random, names: Names) -> dict[str, str]:
    year, year_mayor = rng.randrange(900, 1850), rng.randrange(1990, 2024)
    return {
        "town": names.town(),
        "region": names.word(),
        "river": f"{names.word()} River",
        "year": str(year),
        "year_mayor": str(year_mayor),
        "founder": names.person(),
        "mayor": names.person(),
        "count": f"{rng.randrange(800, 90000):,}",
        "feature": rng.choice(FEATURES),
    }


def invention_values(rng: random.Random, names: Names) -> dict[str, str]:
    name, device, purpose = rng.choice(DEVICES)
    inventor = names.person()
    year, year_demo, year_sold = distinct_years(rng, 3, 1750, 1990)
    return {
        "invention": f"{inventor.split(' ')[1]} {name}",
        "device": device,
        "purpose": purpose,
        "inventor": inventor,
        "year": str(year),
        "year_demo": str(year_demo),
        "year_sold": str(year_sold),
        "town": names.town(),
        "weight": f"{rng.randrange(2, 900)} kilograms",
        "count": f"{rng.randrange(100, 50000):,}",
        "company": f"{names.word()} {rng.choice(['Works', 'Manufacturing', 'Engineering'])}",
    }


def river_values(rng: random.Random, names: Names) -> dict[str, str]:
    return {
        "river": names.word(),
        "region": names.word(),
        "length": f"{rng.randrange(12, 900)} kilometres",
        "hills": f"{names.word()} {rng.choice(['Hills', 'Mountains', 'Highlands'])}",
        "lake": f"Lake {names.word()}",
        "town": names.town(),
        "year": str(rng.randrange(1500, 1900)),
        "explorer": names.person(),
        "count": str(rng.randrange(2, 40)),
    }


KINDS = [
    (PERSON, person_values, "name"),
    (COMPANY, company_values, "company"),
    (TOWN, town_values, "town"),
    (INVENTION, invention_values, "invention"),
    (RIVER, river_values, "river"),
]


# --- paragraphs and rows -----------------------------------------------------------------------------------
def fill(template: str, values: dict[str, str], offset: int) -> tuple[str, dict[str, int]]:
    """Format ``template``; return the text and where each slot's value starts (shifted by ``offset``)."""
    text, starts = "", {}
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field is not None:
            starts.setdefault(field, offset + len(text))
            text += values[field]
    return text, starts


def paragraph_rows(rng: random.Random, names: Names) -> tuple[str, str, list[tuple[str, str, int]]]:
    """One paragraph (3-5 sentences) and 3-5 (question, answer, answer_start) about it."""
    facts, make_values, title_slot = rng.choice(KINDS)
    values = make_values(rng, names)
    chosen = [facts[0], *rng.sample(facts[1:], rng.randint(2, min(4, len(facts) - 1)))]
    sentences, candidates = [], []
    offset = 0
    for variants, questions in chosen:
        sentence, starts = fill(rng.choice(variants), values, offset)
        sentences.append(sentence)
        offset += len(sentence) + 1  # the joining space
        for question, slot in questions:
            if slot in starts:
                candidates.append((question.format(**values), values[slot], starts[slot]))
    context = " ".join(sentences)
    # One question per answer slot at most, so no two rows of a paragraph share an answer.
    rng.shuffle(candidates)
    by_answer: dict[str, tuple[str, str, int]] = {}
    for candidate in candidates:
        by_answer.setdefault(candidate[1], candidate)
    rows = list(by_answer.values())[: rng.randint(3, 5)]
    return values[title_slot], context, rows


def generate(split: str, num_rows: int, seed: int, used: set[str]) -> list[dict]:
    rng = random.Random(f"{seed}-{split}")
    names = Names(rng, used)
    rows: list[dict] = []
    paragraph = 0
    while len(rows) < num_rows:
        title, context, qas = paragraph_rows(rng, names)
        for k, (question, answer, start) in enumerate(qas[: num_rows - len(rows)]):
            assert context[start : start + len(answer)] == answer, (context, answer, start)
            rows.append(
                {
                    "id": f"facts-{split}-{paragraph:04d}-{k}",
                    "title": title,
                    "context": context,
                    "question": question,
                    "answers": {"text": [answer], "answer_start": [start]},
                }
            )
        paragraph += 1
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "facts_squad")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    used: set[str] = set()  # shared, so validation names never repeat training names
    for split, count in (("train", args.num_train), ("validation", args.num_validation)):
        rows = generate(split, count, args.seed, used)
        write_jsonl(rows, args.out_dir / f"{split}.jsonl")
        print(f"wrote {len(rows)} rows to {args.out_dir / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
