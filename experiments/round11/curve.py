"""curve.py LOG: mean train-rollout accuracy at turns 1 and 4 (and their gap) per 40-step window."""
import re, sys
t1 = [float(x) for x in re.findall(r"rollout/acc_turn_1': '([0-9.]+)'", open(sys.argv[1], errors="ignore").read())]
t4 = [float(x) for x in re.findall(r"rollout/acc_turn_4': '([0-9.]+)'", open(sys.argv[1], errors="ignore").read())]
w = 40
for i in range(0, len(t1), w):
    a, b = t1[i:i+w], t4[i:i+w]
    print(f"steps {i+1:3d}-{i+len(a):3d}: t1 {sum(a)/len(a):.3f} t4 {sum(b)/len(b):.3f} gain {sum(b)/len(b)-sum(a)/len(a):+.3f}")
