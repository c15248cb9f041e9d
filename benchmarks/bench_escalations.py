"""Escalations: quality on a dataset's dev split (predicted vs gold emotions) and events/s of the real app.

The model is the store's CURRENT version unless --version or --channel names another (e.g.
--channel emorynlp); its manifest says which dataset's dev split the predictions are of.

Quality. Each dev conversation becomes two streams of emotion events: one with the emotions
the served model predicted (confidence = softmax(scores / temperature), as the worker computes
it) and one with the gold labels (confidence 1). The pure rules (:class:`Escalator`, the same
code the app runs) are applied to both; escalations from the gold stream are the reference.
Per rule, run alone (the other rules disabled, so one rule's escalation cannot hide another's):

- conversation level: does the rule fire at least once in the conversation;
- escalation level: an opening from the predictions matches a gold opening of the same rule in
  the same conversation within +-2 turns (one-to-one, in turn order).

"all rules" is the shipped configuration, where a conversation has one open escalation at a time
and any rule's opening counts.

Turn level, what every rule is built from: of the gold negative turns (the rules' negative
emotions), how many the model calls negative (recall), how many of the turns it calls negative
are (precision), and the median confidence on those turns.

Throughput. The same predicted events, copied under new conversation ids, are put on a topic of
the local broker; then `erc-stream escalations` starts and processes the backlog. events/s is
events / (time from /readyz to the last event counted by /metrics); CPU seconds of the app's
process are reported too, as they depend less on what else runs on the machine.

The predictions come from `erc-train evaluate --predictions` (see --predictions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _common import ROOT, command_line, machine_info, md_table, write_results

from erc_stream.artifact import current_file, read_current, version_path
from erc_stream.devtools.broker import LocalBroker, create_topics, free_port
from erc_stream.errors import ConfigError
from erc_stream.escalations.messages import EmotionEvent
from erc_stream.escalations.rules import RULE_NAMES, RulesConfig, load_rules
from erc_stream.escalations.state import Escalator
from erc_stream.events import SourceRef
from erc_stream.model import confidence_temperature
from trainer.calibration import top_confidence
from trainer.datasets import load_split

TOLERANCE_TURNS = 2
DATASET_NAMES = {"meld": "MELD", "emorynlp": "EmoryNLP", "dailydialog": "DailyDialog", "iemocap": "IEMOCAP"}
CLI = Path(sys.executable).parent / "erc-stream"


@dataclass(frozen=True)
class Turn:
    conversation_id: str
    index: int
    speaker: str
    gold: str
    predicted: str
    confidence: float
    scores: dict[str, float]


def pick_version(store: Path, version: str | None, channel: str) -> str:
    """--version as given, else the channel's pointer (CURRENT, CURRENT.<channel>)."""
    picked = version or read_current(store, channel)
    if not picked:
        raise SystemExit(f"no {current_file(channel)} version in {store}; name one with --version")
    if not (version_path(store, picked) / "manifest.json").is_file():
        raise SystemExit(f"{store} has no version {picked!r} (no {picked}/manifest.json)")
    return picked


def load_turns(predictions: Path, store: Path, version: str) -> tuple[list[list[Turn]], dict[str, Any]]:
    manifest = orjson.loads((version_path(store, version) / "manifest.json").read_bytes())
    labels: list[str] = manifest["labels"]
    dataset: str = manifest["dataset"]
    temperature = confidence_temperature(manifest)  # the fitted one when calibrated, as the worker uses
    speakers = {c.id: [u.speaker for u in c.utterances] for c in load_split(dataset, "dev")}
    remake = (
        f"make them with: erc-train evaluate --store {store} --version {version} --split dev "
        f"--predictions {predictions}"
    )
    convs: dict[str, list[Turn]] = defaultdict(list)
    for n, line in enumerate(predictions.read_text().splitlines(), 1):
        row = orjson.loads(line)
        conv = row["conversation_id"]
        if conv not in speakers or row["index"] >= len(speakers[conv]):
            raise SystemExit(
                f"{predictions}:{n}: turn {conv}:{row['index']} is not in {dataset} dev, the dataset of {version}; "
                f"the predictions are of another dataset or model: {remake}"
            )
        if row["emotion"] not in labels or row["gold"] not in labels or len(row["scores"]) != len(labels):
            raise SystemExit(f"{predictions}:{n}: labels or scores do not match {version}'s labels {labels}: {remake}")
        if row["scores"][labels.index(row["emotion"])] < max(row["scores"]):
            raise SystemExit(
                f"{predictions}:{n}: emotion {row['emotion']!r} is not the top-scoring label, as the worker's "
                f"and evaluate's always is: {remake}"
            )
        scores = dict(zip(labels, row["scores"], strict=True))
        confidence = float(top_confidence(np.array([row["scores"]]), temperature)[0])  # the event's, as emitted
        convs[conv].append(
            Turn(conv, row["index"], speakers[conv][row["index"]], row["gold"], row["emotion"], confidence, scores)
        )
    ordered = [sorted(turns, key=lambda t: t.index) for turns in convs.values()]
    if not ordered:
        raise SystemExit(f"{predictions} holds no predictions: {remake}")
    return ordered, {"version": version, "dataset": dataset, "labels": labels, "temperature": temperature}


def _event(t: Turn, gold: bool, conv_id: str | None = None) -> EmotionEvent:
    conv = conv_id or t.conversation_id
    emotion = t.gold if gold else t.predicted
    scores = {label: (1.0 if label == emotion else 0.0) for label in t.scores} if gold else t.scores
    return EmotionEvent(
        f"{conv}:{t.index}",
        conv,
        str(t.index),
        t.speaker,
        emotion,
        1.0 if gold else t.confidence,
        scores,
        "x",
        0.0,
        None,
    )


def openings(convs: list[list[Turn]], rules: RulesConfig, gold: bool) -> dict[str, list[tuple[str, int]]]:
    """conversation -> [(rule, turn index)] of every escalation opened."""
    escalator = Escalator(rules)
    out: dict[str, list[tuple[str, int]]] = {}
    for turns in convs:
        state = escalator.new_state(turns[0].conversation_id, 0)
        opened: list[tuple[str, int]] = []
        for i, t in enumerate(turns):
            for esc in escalator.apply(state, _event(t, gold), SourceRef("dev", 0, i)).escalations:
                if esc.status == "opened":
                    opened.append((esc.rule, int(esc.opened_turn_id)))
        out[turns[0].conversation_id] = opened
    return out


def _match(pred: list[int], gold: list[int]) -> int:
    """One-to-one matches within the tolerance, greedy in turn order."""
    free = sorted(gold)
    hits = 0
    for p in sorted(pred):
        for g in free:
            if abs(p - g) <= TOLERANCE_TURNS:
                free.remove(g)
                hits += 1
                break
    return hits


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


def score(pred: dict[str, list[tuple[str, int]]], gold: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    pc = {c for c, o in pred.items() if o}
    gc = {c for c, o in gold.items() if o}
    n_pred = sum(len(o) for o in pred.values())
    n_gold = sum(len(o) for o in gold.values())
    hits = sum(_match([i for _, i in pred[c]], [i for _, i in gold[c]]) for c in pred)
    return {
        "conversations_pred": len(pc),
        "conversations_gold": len(gc),
        "conversation_precision": _ratio(len(pc & gc), len(pc)),
        "conversation_recall": _ratio(len(pc & gc), len(gc)),
        "escalations_pred": n_pred,
        "escalations_gold": n_gold,
        "escalation_precision": _ratio(hits, n_pred),
        "escalation_recall": _ratio(hits, n_gold),
    }


def check_labels(rules: RulesConfig, labels: list[str], version: str) -> None:
    """Refuse rules under which no label of the model is negative: every rule would stay silent."""
    if not set(rules.negative_emotions) & set(labels):
        raise SystemExit(
            f"no emotion in the rules' emotions.negative {list(rules.negative_emotions)} is a label of {version} "
            f"({labels}); add its negative labels to the rules file"
        )


def alone(rules: RulesConfig, rule: str) -> RulesConfig:
    """``rules`` with only ``rule`` enabled, every other setting kept."""
    return replace(rules, **{r: replace(getattr(rules, r), enabled=r == rule) for r in RULE_NAMES})


def quality(convs: list[list[Turn]], rules: RulesConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per rule run alone, and for ``rules`` as given ("all rules"); default: the packaged rules."""
    rules = RulesConfig() if rules is None else rules
    results: dict[str, dict[str, Any]] = {}
    for rule in RULE_NAMES:
        one = alone(rules, rule)
        results[rule] = score(openings(convs, one, gold=False), openings(convs, one, gold=True))
    results["all rules"] = score(openings(convs, rules, False), openings(convs, rules, True))
    return results


CONFIDENCE_STEPS = (0.2, 0.3, 0.4, 0.5)


def turn_level(
    convs: list[list[Turn]],
    negative: tuple[str, ...] = RulesConfig().negative_emotions,
    steps: tuple[float, ...] = CONFIDENCE_STEPS,
) -> dict[str, Any]:
    """Negative-turn recall and precision of the predictions, their median confidence, and the same
    counts when only the turns called negative at a confidence of at least each step count (what a
    rule's min_confidence keeps)."""
    turns = [t for c in convs for t in c]
    gold = [t for t in turns if t.gold in negative]
    called = [t for t in turns if t.predicted in negative]
    hits = sum(t.gold in negative for t in called)
    median = statistics.median(t.confidence for t in called) if called else None
    by_step = []
    for step in steps:
        kept = [t for t in called if t.confidence >= step]
        kept_hits = sum(t.gold in negative for t in kept)
        by_step.append(
            {
                "min_confidence": step,
                "predicted": len(kept),
                "hits": kept_hits,
                "recall": _ratio(kept_hits, len(gold)),
                "precision": _ratio(kept_hits, len(kept)),
            }
        )
    return {
        "negative_gold": len(gold),
        "negative_predicted": len(called),
        "negative_hits": hits,
        "negative_recall": _ratio(hits, len(gold)),
        "negative_precision": _ratio(hits, len(called)),
        "median_confidence_predicted_negative": median,
        "by_min_confidence": by_step,
    }


# ---------------------------------------------------------------- throughput of the real app


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        for f in futures:
            await f
    finally:
        await producer.stop()


def throughput(
    convs: list[list[Turn]],
    copies: int,
    batch_bytes: int,
    partitions: int,
    model_version: str,
    rules_file: Path | None = None,
) -> dict[str, Any]:
    import psutil

    records: list[tuple[bytes, bytes]] = []
    now = time.time()
    for k in range(copies):
        per_conv = []
        for turns in convs:
            conv = f"{turns[0].conversation_id}#{k}"
            per_conv.append(
                [
                    (
                        conv.encode(),
                        orjson.dumps(
                            {
                                "event_id": f"{conv}:{t.index}",
                                "conversation_id": conv,
                                "turn_id": str(t.index),
                                "speaker": t.speaker,
                                "emotion": t.predicted,
                                "confidence": t.confidence,
                                "scores": t.scores,
                                "model_version": model_version,
                                "produced_at": now,
                                "ts": None,
                            }
                        ),
                    )
                    for t in turns
                ]
            )
        for i in range(max(len(r) for r in per_conv)):
            records += [r[i] for r in per_conv if i < len(r)]
    n = len(records)
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topics = {"in": "bench.emotions", "out": "bench.escalations", "dlq": "bench.emotions.dlq"}
        create_topics(broker.bootstrap, {topics["in"]: partitions})
        asyncio.run(_produce(broker.bootstrap, topics["in"], records))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
        env.update(
            {
                "ERC_BOOTSTRAP_SERVERS": broker.bootstrap,
                "ERC_ESCALATIONS_INPUT_TOPIC": topics["in"],
                "ERC_ESCALATIONS_OUTPUT_TOPIC": topics["out"],
                "ERC_ESCALATIONS_DLQ_TOPIC": topics["dlq"],
                "ERC_ESCALATIONS_PRODUCER_MAX_BATCH_BYTES": str(batch_bytes),
                "ERC_ESCALATIONS_SESSION_TIMEOUT_MS": "6000",
                "ERC_ESCALATIONS_HEARTBEAT_INTERVAL_MS": "500",
                "ERC_ESCALATIONS_METRICS_HOST": "127.0.0.1",
                "ERC_ESCALATIONS_METRICS_PORT": str(port),
                "ERC_LOG_LEVEL": "WARNING",
            }
        )
        if rules_file is not None:
            env["ERC_ESCALATIONS_RULES_FILE"] = str(rules_file.resolve())
        log = open(Path(tmp) / "app.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(CLI), "escalations"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not _ready(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the app did not become ready:\n{(Path(tmp) / 'app.log').read_text()[-3000:]}")
                time.sleep(0.05)
            t_ready = time.monotonic()
            cpu_ready = psutil.Process(proc.pid).cpu_times()
            done = 0.0
            while done < n:
                time.sleep(0.1)
                done = _metric(port, "erc_escalations_events_processed_total")
                if time.monotonic() - t_ready > 600:
                    raise SystemExit(f"only {done}/{n} events processed after 600 s")
            wall_s = time.monotonic() - t_ready
            cpu_done = psutil.Process(proc.pid).cpu_times()
            opened = _metric(port, "erc_escalations_opened_total")
            cpu_s = (cpu_done.user + cpu_done.system) - (cpu_ready.user + cpu_ready.system)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {
        "events": n,
        "producer_max_batch_bytes": batch_bytes,
        "partitions": partitions,
        "wall_s": round(wall_s, 2),
        "events_per_s": round(n / wall_s, 1),
        "app_cpu_s": round(cpu_s, 2),
        "cpu_ms_per_event": round(1000 * cpu_s / n, 3),
        "escalations_opened": int(opened),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


DEFAULT_OUT = "bench_escalations"


def check_out(out: str, skip_throughput: bool, rules_file: Path | None = None) -> None:
    """Refuse an output name that is not a plain file stem, a quality-only run over the full
    benchmark's files (which would drop their throughput table), and other rules' figures over the
    packaged rules' ones."""
    if not out or Path(out).name != out or out.startswith("."):
        raise SystemExit(f"--out takes a file name without folder, like bench_escalations_mymodel; got {out!r}")
    if rules_file is not None and out == DEFAULT_OUT:
        raise SystemExit(
            f"--rules-file would overwrite docs/benchmarks/{DEFAULT_OUT}.md (the packaged rules' figures); "
            "give your rules' figures their own name with --out, e.g. --out bench_escalations_my_rules"
        )
    if skip_throughput and out == DEFAULT_OUT:
        raise SystemExit(
            f"--skip-throughput would overwrite docs/benchmarks/{DEFAULT_OUT}.md without its throughput table; "
            "give the quality-only figures their own name with --out, e.g. --out bench_escalations_mymodel"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=Path, default=Path("/tmp/dev_preds.jsonl"))
    parser.add_argument("--store", type=Path, default=ROOT / "models")
    parser.add_argument("--version", default=None, help="the model the predictions are of (default: --channel's)")
    parser.add_argument(
        "--channel", default="", help="without --version: the version CURRENT.<channel> names (e.g. emorynlp)"
    )
    parser.add_argument("--copies", type=int, default=10, help="copies of the dev split in the throughput backlog")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--rules-file",
        type=Path,
        default=None,
        help="escalation rules to measure (YAML, as erc-stream escalations --rules-file); default: the packaged ones",
    )
    parser.add_argument("--skip-throughput", action="store_true", help="quality only; needs --out")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="name of the docs/benchmarks/NAME.json and .md it writes (another model's figures go beside, "
        "not over, the shipped ones)",
    )
    args = parser.parse_args()
    check_out(args.out, args.skip_throughput, args.rules_file)
    try:
        rules = load_rules(args.rules_file)
    except ConfigError as exc:
        raise SystemExit(f"--rules-file: {exc}") from None
    version = pick_version(args.store, args.version, args.channel)
    if not args.predictions.is_file():
        raise SystemExit(
            f"{args.predictions} is missing; make it with: erc-train evaluate --store {args.store} "
            f"--version {version} --split dev --predictions {args.predictions}"
        )
    before = machine_info()
    convs, model = load_turns(args.predictions, args.store, version)
    dataset = DATASET_NAMES.get(model["dataset"], model["dataset"])
    check_labels(rules, model["labels"], version)
    q = quality(convs, rules)
    turns = turn_level(convs, rules.negative_emotions)
    runs = [
        throughput(convs, args.copies, b, args.partitions, model["version"], args.rules_file)
        for b in (() if args.skip_throughput else (1, 16384))
    ]
    after = machine_info()

    rows = [
        [
            name,
            f"{r['escalations_gold']} / {r['escalations_pred']}",
            _pct(r["escalation_precision"]),
            _pct(r["escalation_recall"]),
            f"{r['conversations_gold']} / {r['conversations_pred']}",
            _pct(r["conversation_precision"]),
            _pct(r["conversation_recall"]),
        ]
        for name, r in q.items()
    ]
    rules_name = (
        "default rules (erc_stream/escalations/rules.yaml)" if args.rules_file is None else f"rules {args.rules_file}"
    )
    md = [
        f"# Escalations: quality on {dataset} dev" + ("" if args.skip_throughput else " and throughput of the app"),
        "",
        f"Command: `{command_line()}`. Model `{model['version']}` (temperature {model['temperature']}), "
        f"{len(convs)} {dataset} dev conversations, {sum(len(c) for c in convs)} turns; {rules_name}. "
        f"Escalation-level matches allow +-{TOLERANCE_TURNS} turns.",
        "",
        md_table(
            [
                "rule",
                "escalations gold / predicted",
                "precision",
                "recall",
                "conversations gold / predicted",
                "conv. precision",
                "conv. recall",
            ],
            rows,
        ),
        "",
        f"Turns: the model calls {turns['negative_predicted']} turns negative, {turns['negative_hits']} of the "
        f"{turns['negative_gold']} gold negative turns among them: recall {_pct(turns['negative_recall'])}, "
        f"precision {_pct(turns['negative_precision'])}; median confidence on the turns it calls negative "
        + (
            "n/a"
            if turns["median_confidence_predicted_negative"] is None
            else f"{turns['median_confidence_predicted_negative']:.2f}"
        )
        + " (negative = the rules' negative emotions). Keeping only the turns called negative at a confidence "
        "of at least t, as a rule's min_confidence does:",
        "",
        md_table(
            ["t", "turns called negative", "of them gold negative", "precision", "recall"],
            [
                [f"{r['min_confidence']:g}", r["predicted"], r["hits"], _pct(r["precision"]), _pct(r["recall"])]
                for r in turns["by_min_confidence"]
            ],
        ),
    ]
    if runs:
        md += [
            "",
            md_table(
                ["producer_max_batch_bytes", "events", "partitions", "wall s", "events/s", "app CPU ms/event"],
                [
                    [
                        r["producer_max_batch_bytes"],
                        r["events"],
                        r["partitions"],
                        r["wall_s"],
                        r["events_per_s"],
                        r["cpu_ms_per_event"],
                    ]
                    for r in runs
                ],
            ),
        ]
    md += [
        "",
        f"Machine: {before['cpu_model']}, {before['logical_cpus']} logical CPUs, shared with other work; "
        f"load average (1/5/15 min) before {before['loadavg_1_5_15']}, after {after['loadavg_1_5_15']}; "
        f"git {before['git']}; {before['time_utc']}.",
    ]
    payload = {
        "model": model,
        "rules_file": None if args.rules_file is None else str(args.rules_file),
        "quality": q,
        "turns": turns,
        "throughput": runs,
        "machine_before": before,
        "machine_after": after,
    }
    write_results(args.out, payload, "\n".join(md))


if __name__ == "__main__":
    main()
