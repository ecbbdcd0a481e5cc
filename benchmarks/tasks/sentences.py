"""Short English sentences for the MiniLM task: 12 per topic in 8 topics (labeled, for evaluation), and the
unlabeled calibration sentences, drawn from separate hand-written text (`calibration_text.py`) on the same
topics and on everyday subjects, none of them an evaluation sentence."""

from __future__ import annotations

import numpy as np

from .calibration_text import SENTENCES

TOPICS: dict[str, list[str]] = {
    "weather": [
        "It will rain heavily tomorrow afternoon.", "The forecast says sunny skies all week.",
        "A cold front is moving in from the north.", "Snow is expected in the mountains tonight.",
        "The humidity made the afternoon unbearable.", "Strong winds knocked down several trees.",
        "Temperatures will drop below freezing overnight.", "We saw a rainbow after the thunderstorm.",
        "Fog covered the valley early this morning.", "The heat wave should end by Friday.",
        "Hail damaged cars across the city.", "It has been cloudy and drizzly for days.",
    ],
    "cooking": [
        "Simmer the sauce for twenty minutes.", "Add a pinch of salt to the boiling water.",
        "She baked a chocolate cake for dessert.", "Chop the onions and fry them in butter.",
        "This soup needs more garlic and pepper.", "Knead the dough until it is smooth.",
        "Roast the vegetables in a hot oven.", "He grilled salmon with lemon and herbs.",
        "Whisk the eggs with sugar until fluffy.", "Let the bread cool before slicing it.",
        "The recipe calls for two cups of flour.", "Marinate the chicken overnight in yogurt.",
    ],
    "sports": [
        "The striker scored twice in the second half.", "Our team won the championship last night.",
        "She ran the marathon in under three hours.", "The referee showed him a red card.",
        "The tennis match went to a fifth set.", "He hit a home run in the ninth inning.",
        "The coach changed tactics at halftime.", "The swimmer broke the world record.",
        "Fans cheered as the players entered the stadium.", "The goalkeeper saved a penalty kick.",
        "The basketball game went into overtime.", "The cyclist won the mountain stage.",
    ],
    "programming": [
        "The function returns null when the list is empty.", "I fixed the bug in the parser.",
        "Compile the code before running the tests.", "This loop iterates over every element.",
        "The server crashed because of a memory leak.", "Use a dictionary to look up the keys quickly.",
        "The unit tests failed after the refactor.", "Python raises an exception on division by zero.",
        "Commit your changes and open a pull request.", "The database query is far too slow.",
        "Declare the variable before using it.", "The compiler reported a syntax error.",
    ],
    "finance": [
        "The stock market fell sharply today.", "Interest rates were raised by the central bank.",
        "She invested her savings in index funds.", "The company reported record quarterly profits.",
        "Inflation reduced the value of their wages.", "He paid off his mortgage early.",
        "The bank approved the loan application.", "Bond yields rose after the announcement.",
        "Investors sold shares amid recession fears.", "The budget deficit grew this year.",
        "Taxes are due at the end of April.", "The currency lost ten percent against the dollar.",
    ],
    "health": [
        "Regular exercise lowers blood pressure.", "The doctor prescribed antibiotics for the infection.",
        "Drink plenty of water when you have a fever.", "He needs surgery on his injured knee.",
        "A balanced diet supports the immune system.", "The nurse checked the patient's temperature.",
        "Sleep deprivation affects concentration.", "The vaccine protects against the flu.",
        "She has been suffering from migraines.", "Smoking damages the lungs over time.",
        "The clinic offers free health screenings.", "Stretching helps prevent muscle injuries.",
    ],
    "travel": [
        "Our flight to Rome was delayed by two hours.", "We booked a hotel near the beach.",
        "Don't forget your passport at the airport.", "The train journey through the Alps was beautiful.",
        "They backpacked across Southeast Asia.", "The museum tour lasted all afternoon.",
        "We rented a car to explore the coast.", "The customs line at the border was long.",
        "He packed light for the weekend trip.", "The cruise ship docked at the island.",
        "Our luggage was lost during the layover.", "We visited the old town and the castle.",
    ],
    "music": [
        "The band played their new song at the concert.", "She practices the violin every day.",
        "The orchestra performed a Beethoven symphony.", "He wrote the lyrics for the album.",
        "The guitarist tuned his strings before the show.", "That melody has been stuck in my head.",
        "The choir sang at the wedding.", "The drummer kept a steady rhythm.",
        "The singer hit a very high note.", "They recorded the album in a small studio.",
        "Jazz musicians love to improvise.", "The piano sounds slightly out of tune.",
    ],
}

def check_disjoint() -> None:
    """No calibration sentence is an evaluation sentence (compared case- and space-insensitively)."""
    norm = lambda text: " ".join(text.lower().split())
    evaluation = {norm(t) for texts in TOPICS.values() for t in texts}
    shared = [t for t in SENTENCES if norm(t) in evaluation]
    assert not shared, f"calibration sentences that are also evaluation sentences: {shared}"


check_disjoint()


def calibration_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` unlabeled sentences from the hand-written calibration text (`calibration_text.SENTENCES`, no
    evaluation sentence among them), in an order shuffled deterministically by `seed`; past the end of the
    list it starts over (a fresh shuffle each pass)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < count:
        out.extend(SENTENCES[i] for i in rng.permutation(len(SENTENCES)))
    return out[:count]
