"""The tuner (`jax_rnn.tune`): deterministic with an injected timer, never picks a program whose losses differ,
its wisdom file validated (stale, foreign, corrupted, concurrent writers), every candidate equal to the plain
program."""

import dataclasses
import json
import multiprocessing

import jax
import numpy as np
import pytest

import jax_rnn
from jax_rnn import tune

PLAN = jax_rnn.plan(state_size=4, batch_size=20, num_steps=5, backend="cpu")


def fake(seconds, losses=None, calls=None):
    """A measure: ``seconds(plan)``, losses 0 (or ``losses(plan)``), counting calls."""
    def measure(plan, inputs):
        if calls is not None:
            calls.append(plan)
        return seconds(plan), np.zeros(3) if losses is None else losses(plan), 0.0
    return measure


def test_choice_is_deterministic_and_the_fastest_matching_candidate():
    speed = lambda p: 1.0 / (1 + tune.candidates(PLAN).index(p)) if p in tune.candidates(PLAN) else 5.0
    wrong = tune.candidates(PLAN)[-1]  # the fastest, but its losses differ
    measure = fake(speed, losses=lambda p: np.full(3, 1e-3) if p == wrong else np.zeros(3))
    first, rows = tune.choose(PLAN, measure)
    assert first == tune.candidates(PLAN)[-2] and tune.choose(PLAN, measure)[0] == first
    assert [r["accepted"] for r in rows].count(False) == 1
    assert {r["plan"]["layout"] for r in rows} == {"batch_first", "batch_last"}


def test_a_failing_candidate_is_skipped_and_the_rule_kept_within_the_margin():
    def seconds(p):
        if p.unroll == 1:
            raise RuntimeError("does not compile")
        return 0.97 if p.xla_options else 1.0
    best, rows = tune.choose(PLAN, fake(seconds))
    assert best == PLAN  # 3% faster is within the margin: noise changes nothing
    assert any("does not compile" in r.get("error", "") for r in rows)


def test_wisdom_is_reused_without_timing(tmp_path):
    calls, path = [], tmp_path / "wisdom.json"
    measure = fake(lambda p: 0.5 if p.unroll == 2 or p.epoch_unroll == 2 else 1.0, calls=calls)
    best = tune.tuned(PLAN, measure, path)
    assert best.epoch_unroll == 2 and calls
    tune._tuned.cache_clear()
    calls.clear()
    assert tune.tuned(PLAN, measure, path) == best and not calls  # from the file
    entry = tune.read_wisdom(path)[tune.key(PLAN)]
    assert entry["tuning_seconds"] >= 0 and len(entry["candidates"]) == len(tune.candidates(PLAN))


@pytest.mark.parametrize("spoil", ["stale", "foreign", "corrupted", "garbage"])
def test_a_spoiled_entry_is_ignored_and_tuned_again(spoil, tmp_path):
    path, calls = tmp_path / "wisdom.json", []
    measure = fake(lambda p: 1.0 if p != PLAN.plain() else 0.5, calls=calls)
    other = dataclasses.replace(PLAN, state_size=8, unroll=3).record()
    key = json.loads(tune.key(PLAN))
    entries = {"stale": {json.dumps({**key, "jaxlib": "0.0.1"}, sort_keys=True): {"plan": PLAN.record()}},
               "foreign": {tune.key(PLAN): {"plan": other}},
               "corrupted": {tune.key(PLAN): {"plan": {"state_size": "four"}}}}
    path.write_text("{not json" if spoil == "garbage" else json.dumps({"format": tune.FORMAT, "entries": entries[spoil]}))
    assert tune.tuned(PLAN, measure, path) == PLAN.plain() and calls  # measured again, not trusted
    assert tune.read_wisdom(path)[tune.key(PLAN)]["plan"] == PLAN.plain().record()  # and the file repaired


def _store(args):
    path, state_size = args
    plan = dataclasses.replace(PLAN, state_size=state_size)
    tune._store(plan, {"plan": plan.record()}, path)


def test_concurrent_writers_keep_every_entry(tmp_path):
    path = tmp_path / "wisdom.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_store, [(path, d) for d in range(1, 17)])
    stored = tune.read_wisdom(path)
    assert len(stored) == 16 and {e["plan"]["state_size"] for e in stored.values()} == set(range(1, 17))
    assert tune.clear_wisdom(path) == 16 and not path.exists()


def test_the_environment_turns_tuning_on_outside_traces_only(tmp_path, monkeypatch):
    monkeypatch.setenv("RNN_SCAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(tune.ENV, "1")
    stored = dataclasses.replace(PLAN, unroll=3)
    tune._store(PLAN, {"plan": stored.record()}, tmp_path / "wisdom.json")
    assert jax_rnn.plan(4, 20, 5, backend="cpu") == stored
    assert jax_rnn.plan(4, 20, 5, backend="cpu", tune=False) == PLAN
    assert jax.jit(lambda: np.int32(jax_rnn.plan(4, 20, 5, backend="cpu").unroll))() == PLAN.unroll


@pytest.mark.parametrize("cell", [dict(state_size=4, batch_size=20, num_steps=5),
                                  dict(state_size=16, batch_size=20, num_steps=3, backprop_steps=7),
                                  dict(state_size=8, batch_size=16, num_steps=1, runs=3)])
def test_every_candidate_trains_as_the_plain_program(cell):
    _, rows = tune.choose(jax_rnn.plan(**cell, backend="cpu"))
    assert all(r.get("accepted") for r in rows), [r for r in rows if not r.get("accepted")]
    assert len(rows) >= 5
