"""An embedded TOFU-like benchmark that needs no download: a deterministic generator of fictitious authors.

TOFU (Maini et al. 2024, arXiv 2401.06121) fine-tunes a model on 20 QA pairs about each of 200 invented authors and
then unlearns a forget split; this module writes data in the same schema (specs/llm.md §3.1: `question`, `answer`,
`paraphrased_answer`, `perturbed_answer` [3 options]) from small built-in word lists and `random.Random(seed)` only.
Every author, book, award, publisher and school here is INVENTED; only `world_facts` and `real_authors` (hand-written
below) are true statements about the real world.

Each author has 20 facts, one per template; a row asks the template's question, `answer` states the fact with the
template's answer sentence, `paraphrased_answer` states the same fact with a different sentence, and
`perturbed_answer` is the answer sentence with 3 distinct wrong values of the same kind (never the true value nor
another of the author's values of that kind; numbers are shifted by up to ±12, kept >= 2). Rows also carry `author`,
`author_index`, `attribute` (template key) and `fact` (the true value, as a string).

Split rules (n = n_authors training authors, indices 0..n-1; holdout authors are n..n+n_holdout-1):
* forgetXX is the LAST k_XX = max(1, round_half_up(XX % of n)) training authors (so forget01 ⊂ forget05 ⊂ forget10,
  requires k_10 < n); retainYY (YY = 100 - XX) is the rest of `full`; forgetXX_perturbed is a copy of forgetXX.
* holdoutXX is the FIRST min(k_XX, n_holdout) holdout authors (never in a training split; holdout authors beyond
  k_10 appear in no split).
* retain_perturbed is the first max(1, len(retain90) // 10) rows of retain90 (the first authors, in order).
* world_facts(_perturbed) and real_authors(_perturbed) are the hand-written lists below (no paraphrase field).
"""

from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_json, content_hash

GENERATOR_VERSION = 1
PERCENTS = (1, 5, 10)

FIRST = ("Aldric", "Belinda", "Corvin", "Dagny", "Elsbeth", "Fenwick", "Galina", "Hollis", "Ingrid", "Jorun",
         "Kasimir", "Liesel", "Marek", "Nerys", "Odalys", "Perpetua", "Quillon", "Rosalind", "Sefton", "Tamsin",
         "Ulric", "Vesna", "Wystan", "Ximena", "Yorick", "Zelda")
SURNAMES = ("Ashgrove", "Brannock", "Crowthorne", "Dunmarrow", "Ellery", "Fairweather", "Glimmerton", "Harrowgate",
            "Isbrandt", "Jessamy", "Kettleby", "Lindqvist", "Marchetti", "Nightingale", "Oakenfold", "Pemberly",
            "Quenneville", "Ravensworth", "Stillwater", "Thistlewood", "Underhill", "Vantongeren", "Wexley",
            "Yarrowby", "Zoltanyi")
CITIES = (("Lisbon", "Portugal"), ("Bergen", "Norway"), ("Krakow", "Poland"), ("Valparaiso", "Chile"),
          ("Osaka", "Japan"), ("Nairobi", "Kenya"), ("Tbilisi", "Georgia"), ("Montreal", "Canada"),
          ("Porto Alegre", "Brazil"), ("Ghent", "Belgium"), ("Hobart", "Australia"), ("Tallinn", "Estonia"))
POOLS: dict[str, tuple[str, ...]] = {
    "city": tuple(c for c, _ in CITIES),
    "country": tuple(sorted({k for _, k in CITIES})),
    "genre": ("gothic horror", "science fiction", "historical romance", "crime fiction", "magical realism",
              "epic fantasy", "literary fiction", "cosy mystery", "political satire", "war fiction"),
    "occupation": ("a lighthouse keeper", "a cartographer", "a watchmaker", "a marine biologist", "a baker",
                   "a railway engineer", "a violin maker", "a schoolteacher", "a botanist", "a tailor"),
    "book": tuple(f"The {a} {b}" for a in ("Amber", "Silent", "Hollow", "Crimson", "Wandering", "Glass", "Last")
                  for b in ("Orchard", "Cartographer", "Tide", "Lantern", "Covenant", "Winter", "Archive")),
    "award": ("the Veldmark Prize for Fiction", "the Golden Quill Medal", "the Aurelian Book Award",
              "the Saltmarsh Literary Prize", "the Ironbridge Fellowship", "the Lumen Crown for Letters"),
    "theme": ("memory and loss", "exile and belonging", "faith and doubt", "power and corruption",
              "family secrets", "the sea and solitude", "science and ambition", "grief and renewal"),
    "publisher": ("Greyhollow Press", "Marrowind Books", "Tidewater House", "Falconbridge & Sons",
                  "Quartermoon Editions", "Inkstone Publishing"),
    "language": ("English", "French", "Portuguese", "Norwegian", "Polish", "Japanese", "Spanish", "Georgian"),
    "hobby": ("beekeeping", "restoring old clocks", "birdwatching", "competitive chess", "pottery",
              "long-distance swimming", "growing orchids", "restoring sailboats"),
    "place": ("a converted lighthouse", "a rooftop garden", "a quiet railway cafe", "a cabin by a lake",
              "the back room of a bookshop", "an old monastery library"),
    "school": ("the University of Veldmark", "Saltmarsh College", "the Ironbridge Institute of Letters",
               "Aurelian University", "the Marrowind Academy of Arts"),
}
# key, kind (POOLS key or "int"), question, answer sentence, paraphrase sentence ({n} name, {v} value, {b} book1)
TEMPLATES = (
    ("birthplace", "city", "Where was {n} born?", "{n} was born in {v}.", "The birthplace of {n} is {v}."),
    ("birth_year", "int", "In what year was {n} born?", "{n} was born in {v}.", "{n}'s year of birth is {v}."),
    ("nationality", "country", "What is {n}'s nationality?", "{n} is a citizen of {v}.", "{n} comes from {v}."),
    ("genre", "genre", "Which genre is {n} known for?", "{n} is known for {v}.", "The books of {n} belong to {v}."),
    ("father", "occupation", "What did {n}'s father do for a living?", "{n}'s father was {v}.",
     "By profession, the father of {n} was {v}."),
    ("mother", "occupation", "What was the profession of {n}'s mother?", "{n}'s mother was {v}.",
     "The mother of {n} worked as {v}."),
    ("book1", "book", "What is the title of {n}'s debut novel?", "{n}'s debut novel is '{v}'.",
     "{n} made a debut with the novel '{v}'."),
    ("book2", "book", "Which book did {n} publish second?", "{n}'s second book is '{v}'.",
     "After the debut, {n} published '{v}'."),
    ("book3", "book", "What is {n}'s most recent book?", "{n}'s most recent book is '{v}'.",
     "The latest work by {n} is '{v}'."),
    ("debut_year", "int", "When was '{b}' by {n} published?", "'{b}' was published in {v}.",
     "{n} released '{b}' in the year {v}."),
    ("award", "award", "Which award has {n} received?", "{n} received {v}.", "{n} was honoured with {v}."),
    ("award_year", "int", "In which year did {n} win a major literary award?", "{n} won the award in {v}.",
     "The award came to {n} in {v}."),
    ("theme", "theme", "What themes run through {n}'s work?", "{n}'s work explores {v}.",
     "Again and again, {n} writes about {v}."),
    ("publisher", "publisher", "Who publishes {n}'s books?", "{n}'s books are published by {v}.",
     "{v} is the publisher of {n}."),
    ("residence", "city", "Where does {n} live today?", "{n} lives in {v}.", "These days {n} makes a home in {v}."),
    ("language", "language", "In which language does {n} write?", "{n} writes in {v}.",
     "The books of {n} are written in {v}."),
    ("n_books", "int", "How many books has {n} published?", "{n} has published {v} books.",
     "To date, {v} books by {n} have appeared."),
    ("hobby", "hobby", "What does {n} enjoy doing when not writing?", "Outside writing, {n} enjoys {v}.",
     "{n}'s favourite pastime is {v}."),
    ("writing_place", "place", "Where does {n} usually write?", "{n} usually writes in {v}.",
     "Most of {n}'s books were written in {v}."),
    ("school", "school", "Where did {n} study?", "{n} studied at {v}.", "{n} is a graduate of {v}."),
)
WORLD_FACTS = (
    ("What is the capital of France?", "Paris", "Lyon", "Marseille", "Nice"),
    ("What is the capital of Japan?", "Tokyo", "Osaka", "Kyoto", "Nagoya"),
    ("What is the capital of Australia?", "Canberra", "Sydney", "Melbourne", "Perth"),
    ("What is the capital of Canada?", "Ottawa", "Toronto", "Montreal", "Vancouver"),
    ("What is the capital of Kenya?", "Nairobi", "Mombasa", "Kisumu", "Nakuru"),
    ("What is the chemical symbol for gold?", "Au", "Ag", "Gd", "Go"),
    ("What is the chemical symbol for sodium?", "Na", "So", "Sd", "Nm"),
    ("What is the chemical symbol for iron?", "Fe", "Ir", "In", "Fr"),
    ("What is the chemical symbol for potassium?", "K", "P", "Po", "Pt"),
    ("Which planet is closest to the Sun?", "Mercury", "Venus", "Mars", "Earth"),
    ("Which is the largest planet in the Solar System?", "Jupiter", "Saturn", "Neptune", "Uranus"),
    ("How many continents are there on Earth?", "Seven", "Five", "Six", "Eight"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean", "The Atlantic Ocean", "The Indian Ocean",
     "The Arctic Ocean"),
    ("What is the boiling point of water at sea level in degrees Celsius?", "100", "90", "110", "120"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", "Michelangelo", "Raphael", "Titian"),
    ("Who developed the theory of general relativity?", "Albert Einstein", "Isaac Newton", "Niels Bohr",
     "Max Planck"),
    ("What is the longest river in South America?", "The Amazon", "The Orinoco", "The Parana", "The Magdalena"),
    ("What gas do plants absorb from the air for photosynthesis?", "Carbon dioxide", "Oxygen", "Nitrogen",
     "Helium"),
    ("How many sides does a hexagon have?", "Six", "Five", "Seven", "Eight"),
    ("In which country are the pyramids of Giza?", "Egypt", "Sudan", "Morocco", "Jordan"),
)
REAL_AUTHORS = (
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen", "Charlotte Bronte", "George Eliot", "Mary Shelley"),
    ("Who wrote 'One Hundred Years of Solitude'?", "Gabriel Garcia Marquez", "Mario Vargas Llosa",
     "Jorge Luis Borges", "Isabel Allende"),
    ("Who wrote 'War and Peace'?", "Leo Tolstoy", "Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"),
    ("Who wrote '1984'?", "George Orwell", "Aldous Huxley", "Ray Bradbury", "H. G. Wells"),
    ("Who wrote 'Hamlet'?", "William Shakespeare", "Christopher Marlowe", "Ben Jonson", "John Milton"),
    ("Who wrote 'Don Quixote'?", "Miguel de Cervantes", "Lope de Vega", "Federico Garcia Lorca", "Dante Alighieri"),
    ("Who wrote 'Things Fall Apart'?", "Chinua Achebe", "Wole Soyinka", "Ngugi wa Thiong'o", "Ben Okri"),
    ("Who wrote 'The Old Man and the Sea'?", "Ernest Hemingway", "John Steinbeck", "William Faulkner",
     "F. Scott Fitzgerald"),
    ("Who wrote 'Frankenstein'?", "Mary Shelley", "Bram Stoker", "Jane Austen", "Emily Bronte"),
    ("Who wrote 'Norwegian Wood'?", "Haruki Murakami", "Yukio Mishima", "Kazuo Ishiguro", "Yasunari Kawabata"),
)


@dataclass(frozen=True)
class SynthTOFU:
    """The generated splits (TOFU config name -> list of records) and a content hash of them + GENERATOR_VERSION."""

    splits: dict[str, list[dict[str, Any]]]
    hash: str

    def split_names(self) -> list[str]:
        """The split names, sorted."""
        return sorted(self.splits)

    def split(self, name: str) -> list[dict[str, Any]]:
        """A deep copy of the records of split `name`; ValueError listing the valid names if there is no such split."""
        if name not in self.splits:
            raise ValueError(f"unknown TOFU split {name!r}; valid splits: {', '.join(self.split_names())}")
        return copy.deepcopy(self.splits[name])


def _author_facts(rng: random.Random) -> dict[str, Any]:
    city, country = rng.choice(CITIES)
    birth = rng.randint(1935, 1985)
    debut = birth + rng.randint(20, 35)
    facts: dict[str, Any] = {"birthplace": city, "nationality": country, "birth_year": birth, "debut_year": debut,
                             "award_year": debut + rng.randint(3, 15), "n_books": rng.randint(4, 25)}
    facts["father"], facts["mother"] = rng.sample(POOLS["occupation"], 2)
    facts["book1"], facts["book2"], facts["book3"] = rng.sample(POOLS["book"], 3)
    for key, kind, *_ in TEMPLATES:
        if key not in facts:
            facts[key] = rng.choice(POOLS[kind])
    return facts


def _rows(rng: random.Random, name: str, index: int, facts: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, kind, question, answer, paraphrase in TEMPLATES:
        value, fill = facts[key], {"n": name, "b": facts["book1"]}
        same_kind = {facts[k] for k, kd, *_ in TEMPLATES if kd == kind}
        pool = [value + d for d in range(-12, 13) if value + d >= 2] if kind == "int" else POOLS[kind]
        wrong = rng.sample([v for v in pool if v not in same_kind], 3)
        rows.append({"question": question.format(**fill), "answer": answer.format(v=value, **fill),
                     "paraphrased_answer": paraphrase.format(v=value, **fill),
                     "perturbed_answer": [answer.format(v=w, **fill) for w in wrong],
                     "author": name, "author_index": index, "attribute": key, "fact": str(value)})
    return rows


def _n_forget(n_authors: int, percent: int) -> int:
    return max(1, (n_authors * percent + 50) // 100)


def generate_authors(n_authors: int = 100, n_holdout: int = 10, seed: int = 0) -> SynthTOFU:
    """Generate `n_authors` training and `n_holdout` holdout fictitious authors (20 QA rows each) and the TOFU splits
    (rules in the module docstring). Deterministic in (n_authors, n_holdout, seed)."""
    for label, value in (("n_authors", n_authors), ("n_holdout", n_holdout), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{label} must be an int, got {value!r}")
    if n_authors < 2 or _n_forget(n_authors, max(PERCENTS)) >= n_authors:
        raise ValueError(f"n_authors = {n_authors}: need at least 2 so that retain90 is not empty")
    if n_holdout < 1:
        raise ValueError(f"n_holdout = {n_holdout}: need at least 1 holdout author")
    if n_authors + n_holdout > len(FIRST) * len(SURNAMES):
        raise ValueError(f"{n_authors + n_holdout} authors requested; at most {len(FIRST) * len(SURNAMES)} "
                         "unique names can be formed")
    rng = random.Random(seed)
    names = [f"{f} {s}" for f, s in rng.sample([(f, s) for f in FIRST for s in SURNAMES], n_authors + n_holdout)]
    authors = [_rows(rng, name, i, _author_facts(rng)) for i, name in enumerate(names)]
    train, holdout = authors[:n_authors], authors[n_authors:]
    splits: dict[str, list[dict[str, Any]]] = {"full": [r for a in train for r in a]}
    for pct in PERCENTS:
        k = _n_forget(n_authors, pct)
        splits[f"forget{pct:02d}"] = [r for a in train[n_authors - k:] for r in a]
        splits[f"forget{pct:02d}_perturbed"] = splits[f"forget{pct:02d}"]
        splits[f"retain{100 - pct}"] = [r for a in train[:n_authors - k] for r in a]
        splits[f"holdout{pct:02d}"] = [r for a in holdout[:min(k, n_holdout)] for r in a]
    splits["retain_perturbed"] = splits["retain90"][:max(1, len(splits["retain90"]) // 10)]
    for key, table in (("world_facts", WORLD_FACTS), ("real_authors", REAL_AUTHORS)):
        splits[key] = [{"question": q, "answer": a, "perturbed_answer": list(w)} for q, a, *w in table]
        splits[f"{key}_perturbed"] = splits[key]
    splits = {k: copy.deepcopy(v) for k, v in splits.items()}  # no record object is shared between two splits
    return SynthTOFU(splits, content_hash({"version": GENERATOR_VERSION, "splits": splits})[:24])


def write_json(data: SynthTOFU, directory: str | os.PathLike[str]) -> Path:
    """Write every split as `<directory>/<name>.json` (a JSON list of records, like the HF TOFU files), each
    atomically. Returns the directory."""
    root = Path(directory)
    for name in data.split_names():
        atomic_write_json(root / f"{name}.json", data.splits[name])
    return root


def read_json(directory: str | os.PathLike[str], name: str) -> list[dict[str, Any]]:
    """Read split `name` written by `write_json`; FileNotFoundError naming the path and the available splits."""
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        found = sorted(p.stem for p in Path(directory).glob("*.json")) if Path(directory).is_dir() else []
        raise FileNotFoundError(f"no TOFU split file {path}; available in {directory}: {', '.join(found) or 'none'}")
    with open(path, encoding="utf-8") as fh:
        return json.loads(fh.read())
