"""ood.py MODEL...: turn 1 -> last turn on each OOD split, teacher / retry, from reports/MODEL.json."""
import json
import sys

for m in sys.argv[1:]:
    d = json.load(open(f"reports/{m}.json"))[m]
    out = []
    for split, v in d.items():
        if split.startswith("ood"):
            t, r = v["teacher"]["acc_by_turn"], v["retry"]["acc_by_turn"]
            out.append(f"{split[4:]} {t[0]:.3f} -> {t[-1]:.3f} / {r[-1]:.3f}")
    print(f"{m:10s}", " | ".join(out))
