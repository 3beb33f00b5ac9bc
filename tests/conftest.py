import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # 2-vCPU machines: the reference scans are far faster single-threaded
# OPRM_TEST_DEVICE=cuda runs the exactness suite in fp32 on a GPU: fp32 there means fp32, not TF32 (cuDNN convs default
# to TF32, whose ~1e-3 rounding would hide or fake a 1e-5 difference)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
sys.path.insert(0, os.path.dirname(__file__))
