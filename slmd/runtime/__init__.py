"""Model backends. Importing this package sets OpenMP's wait policy before
llama.cpp's CPU library loads: with the default (active spinning), llama.cpp's
threads burn their cores waiting for each other, and on a device shared with
other programs that turns into a tenfold slowdown (measured on 2 cores: decode
8 vs 85 tokens/s under load). A value set by the operator wins."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
