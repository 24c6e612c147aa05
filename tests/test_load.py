"""Sustained load: one model serving 8 threads gives the serial results and does not grow in memory."""

import threading

import pytest


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def soak(model, words: list[str], decodes: int, threads: int = 8) -> dict:
    """`decodes` single-word decodes spread over `threads` threads, each checked against a serial run."""
    # one word at a time, serially: exactly the computation each thread repeats
    expected = {w: (r.tokens, r.score) for w in words for r in model.decode([w])}
    per_thread = decodes // threads
    mismatches, errors = [], []

    def work(offset: int) -> None:
        try:
            for i in range(per_thread):
                word = words[(offset * 7919 + i) % len(words)]
                r = model.decode([word])[0]
                if (r.tokens, r.score) != expected[word]:
                    mismatches.append(word)
        except Exception as exc:  # pragma: no cover - reported by the assertions
            errors.append(repr(exc))

    def run_all() -> None:
        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    run_all()  # warm-up: arenas and caches reach their steady size
    before = rss_mb()
    mismatches.clear()
    run_all()
    after = rss_mb()
    return {"decodes": per_thread * threads, "mismatches": len(mismatches), "errors": errors,
            "rss_before_mb": round(before, 1), "rss_growth_mb": round(after - before, 1)}


def test_eight_threads_sustained_match_serial_and_hold_memory(tiny_model, dev_words):
    report = soak(tiny_model, dev_words[:200], decodes=2_000)
    assert report["errors"] == [] and report["mismatches"] == 0
    assert report["rss_growth_mb"] < 20, report


@pytest.mark.slow
def test_twenty_thousand_decodes_from_eight_threads(tiny_model, dev_words):
    report = soak(tiny_model, dev_words[:300], decodes=20_000)
    print(report)
    assert report["errors"] == [] and report["mismatches"] == 0
    assert report["rss_growth_mb"] < 20, report
