#!/usr/bin/env python3
"""Refresh the JSON examples in docs/EVENTS.md from the golden vectors.

After the vectors are re-blessed (TRUSTFOLD_BLESS=1 cargo test -p trustfold-core --test
vectors), hashes change; this rewrites each example with the vector event of the same
id (event ids are derived from command ids and stay stable), or, for an example whose id
no vector holds, with the first vector event of the same type. Run it, then
`cargo test -p trustfold-core --test events_doc`.
"""
import glob
import json
import os
import re

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
by_id, by_type, where = {}, {}, {}
for path in sorted(glob.glob(os.path.join(root, "core/tests/vectors/*.history.json"))):
    name = os.path.basename(path)[: -len(".history.json")]
    if name.startswith(("tampered", "bad_", "invalid_")):
        continue
    for rec in json.load(open(path)):
        ev = rec["event"]
        by_id.setdefault(ev["id"], ev)
        by_type.setdefault(ev["type"], ev)
        where.setdefault(ev["id"], (name, ev["seq"]))

doc_path = os.path.join(root, "docs/EVENTS.md")
text = open(doc_path).read()
out, pos, changed = [], 0, 0
for m in re.finditer(r"```json\n(.*?)\n```", text, re.S):
    out.append(text[pos : m.start()])
    block = m.group(1)
    try:
        ev = json.loads(block)
    except ValueError:
        ev = None
    if isinstance(ev, dict) and "type" in ev and "data" in ev:
        new = by_id.get(ev.get("id")) or by_type.get(ev["type"])
        if new is not None:
            if new is not by_id.get(ev.get("id")):
                # Point the "Example (`name`, seq N)" line above at the new source.
                name, seq = where[new["id"]]
                head = out[-1]
                head = re.sub(r"Example \([^)]*\):\s*$", f"Example (`{name}`, seq {seq}):\n\n", head)
                out[-1] = head
            block = json.dumps(new, indent=2, ensure_ascii=False)
            changed += 1
    out.append("```json\n" + block + "\n```")
    pos = m.end()
out.append(text[pos:])
open(doc_path, "w").write("".join(out))
print(f"refreshed {changed} examples in docs/EVENTS.md")
