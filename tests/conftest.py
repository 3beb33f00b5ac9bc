import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # 2-vCPU machines: the reference scans are far faster single-threaded
sys.path.insert(0, os.path.dirname(__file__))
