"""Model backends. Importing this package sets how OpenMP's threads wait,
before llama.cpp's CPU library loads; an operator's OMP_WAIT_POLICY or
GOMP_SPINCOUNT wins.

llama.cpp's CPU threads meet at an OpenMP barrier after every graph node,
about a thousand times per decode. Sleeping there (OMP_WAIT_POLICY=PASSIVE)
costs a wake-up each time: one sequence decoded at 34 tokens/s instead of 150
on a 2-core VM. Spinning without bound (libgomp's default: 300,000 rounds)
burns a core that another program wants. A bounded spin covers the waits of a
step on free cores; when other programs take the cores, the thread governor
(threads.py) computes with fewer threads."""

import os

SPIN_ROUNDS = "20000"  # about a millisecond: 2,000 decoded one sequence at 148 tokens/s, 20,000 at 157

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_ROUNDS
