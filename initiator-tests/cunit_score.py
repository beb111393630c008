#!/usr/bin/env python3
"""Score raw `iscsi-test-cu` output: per test PASS, SKIP (passed only because the target
said "not implemented" / not applicable) or FAIL, robust to suite-level log lines that
libiscsi appends after a test's "passed" (e.g. its PERSISTENT RESERVE IN probe).

Usage: cunit_score.py RAW_OUTPUT [--min-pass N]
Prints failing and skipped tests and `cunit: P passed, F failed, S skipped, T total`;
exits 1 when any test failed or fewer than N passed.
"""
import re
import sys


def score(text):
    results = {}
    suite = None
    chunks = re.split(r"(?m)^(?=Suite: |\s+Test: |Run Summary:)", text)
    for c in chunks:
        m = re.match(r"Suite: (\S+)", c)
        if m:
            suite = m.group(1)
            continue
        m = re.match(r"\s+Test: (\S+) \.\.\.", c)
        if not m:
            continue
        name = f"{suite}.{m.group(1)}"
        body = c[m.end():]
        # The test's own verdict is the first "passed"/"FAILED" token; anything after
        # it belongs to the suite's teardown.
        v = re.search(r"(?<!\[)(passed|FAILED)(?!\])", body)
        if v is None:
            results[name] = ("FAIL", "no verdict (the run stopped here)")
            continue
        own = body[: v.start()]
        if v.group(1) == "FAILED":
            lines = [l.strip() for l in body[v.end():].splitlines() if l.strip()][:3]
            results[name] = ("FAIL", " | ".join(lines))
        elif "[SKIPPED]" in own:
            why = own[own.index("[SKIPPED]"):].splitlines()[0].strip()
            results[name] = ("SKIP", why)
        else:
            results[name] = ("PASS", "")
    return results


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    min_pass = 0
    if "--min-pass" in argv:
        min_pass = int(argv[argv.index("--min-pass") + 1])
    text = open(argv[0], errors="replace").read()
    res = score(text)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for name in sorted(res):
        st, why = res[name]
        counts[st] += 1
        if st != "PASS":
            print(f"{st} {name} {why}")
    summary = re.search(r"tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", text)
    if summary is None:
        print("cunit: no CUnit run summary (the suite did not finish)")
        return 1
    print(
        f"cunit: {counts['PASS']} passed, {counts['FAIL']} failed, "
        f"{counts['SKIP']} skipped, {len(res)} total "
        f"(CUnit summary: {summary.group(3)} of {summary.group(1)} passed, {summary.group(4)} failed)"
    )
    if counts["FAIL"] or int(summary.group(4)) or counts["PASS"] < min_pass:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
