"""oprm: OPRM (Overflow Prevention for Recurrent Models, Ben-Kish et al., COLM 2025) on Hugging Face transformers."""

from .chunking import Chunk, chunk_spans, make_chunks
from .engine import OPRM, Answer, OPRMResult
from .errors import OPRMUsageError
from .prompts import PromptParts, build_prompt, default_qa_template
from .selection import SELECTIONS, ChunkRecord

__version__ = "0.1.0"

__all__ = ["OPRM", "OPRMResult", "Answer", "ChunkRecord", "Chunk", "PromptParts", "OPRMUsageError", "SELECTIONS",
           "build_prompt", "chunk_spans", "make_chunks", "default_qa_template", "__version__"]
