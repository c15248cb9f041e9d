"""Session 30's look at why the `shift` rule is weak (docs/escalations.md, "Why shift is the weak
rule"): for each shift the rule opens on a dev dump's predictions with no gold shift within +-2
turns (bench_escalations.py also pairs them one to one; on the two served models' dumps the
counts are the same: 4 of 21 and 7 of 20 matched), which of its turns the model got wrong; for each gold
shift it misses, what the model called those turns. Run from the repository root:

    .venv/bin/python docs/runs/shift_look.py /tmp/emorynlp_dev_preds.jsonl emorynlp-mpnet-s43-e4
    .venv/bin/python docs/runs/shift_look.py /tmp/dev_preds.jsonl meld-mpnet-w3-s45

(the dumps from `erc-train evaluate ... --predictions FILE`). Not part of the package.
"""

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "benchmarks")]

from bench_escalations import TOLERANCE_TURNS, alone, load_turns, openings  # noqa: E402

from erc_stream.escalations.rules import RulesConfig  # noqa: E402

predictions, version = Path(sys.argv[1]), sys.argv[2]
convs, meta = load_turns(predictions, Path("models"), version)
rules = RulesConfig()
shift = alone(rules, "shift")
pred, gold = openings(convs, shift, gold=False), openings(convs, shift, gold=True)
any_gold = openings(convs, rules, gold=True)  # the shipped configuration, every rule
neg, calm = set(rules.negative_emotions), set(rules.calm_emotions)
n_neg, n_calm = shift.shift.negative_turns, shift.shift.calm_turns


def kind(emotion: str) -> str:
    return "N" if emotion in neg else "C" if emotion in calm else "o"


wrong = Counter()
for turns in convs:
    cid = turns[0].conversation_id
    golds = [i for _, i in gold[cid]]
    for _, i in pred[cid]:
        if any(abs(i - j) <= TOLERANCE_TURNS for j in golds):
            wrong["matched"] += 1
            continue
        negative_run = turns[i - n_neg + 1 : i + 1]
        # The calm run the rule saw: the last n_calm consecutive turns called calm before the negative run.
        j = i - n_neg
        while j >= n_calm - 1 and not all(kind(t.predicted) == "C" for t in turns[j - n_calm + 1 : j + 1]):
            j -= 1
        calm_run = turns[j - n_calm + 1 : j + 1]
        neg_bad = any(kind(t.gold) != "N" for t in negative_run)
        calm_bad = any(kind(t.gold) != "C" for t in calm_run)
        names = {(True, False): "negative run wrong", (False, True): "calm run wrong", (True, True): "both wrong"}
        wrong[names.get((neg_bad, calm_bad), "neither wrong")] += 1
        if any(abs(i - g) <= TOLERANCE_TURNS for _, g in any_gold[cid]):
            wrong["unmatched, but a gold escalation of any rule within 2 turns"] += 1
missed = Counter()
for turns in convs:
    cid = turns[0].conversation_id
    for _, j in gold[cid]:
        if not any(abs(i - j) <= TOLERANCE_TURNS for _, i in pred[cid]):
            last = turns[j - n_neg + 1 : j + 1]
            missed["missed"] += 1
            missed["model called a turn of the negative run not negative"] += any(
                kind(t.predicted) != "N" for t in last
            )
print(f"{version}: shift openings predicted {sum(map(len, pred.values()))}, gold {sum(map(len, gold.values()))}")
for k, v in wrong.items():
    print(f"  predicted, {k}: {v}")
for k, v in missed.items():
    print(f"  gold, {k}: {v}")

# Turning shift off on the prediction side only, against the same reference: the shipped rules
# (shift included) on the gold labels. Which conversations get flagged, and are they gold-flagged?
no_shift = replace(rules, shift=replace(rules.shift, enabled=False))
reference = {c for c, o in any_gold.items() if o}
for name, cfg in (("shipped rules", rules), ("shift off", no_shift)):
    flagged = {c for c, o in openings(convs, cfg, gold=False).items() if o}
    right = len(flagged & reference)
    print(
        f"  {name}: {len(flagged)} conversations flagged, {right} of them gold-flagged "
        f"(precision {right / len(flagged):.1%}, recall {right / len(reference):.1%} of {len(reference)})"
    )
